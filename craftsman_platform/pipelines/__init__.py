"""The Ray jobs that write shards (`craft preprocess`), with the one shard store and output lock they share."""
