"""The pruning engine: the method contract (`method`), the prefill hooks that hand a method
each layer's KV and store what it keeps (`hooks`), greedy decoding over the pruned cache
(`decode`), the attention-scoring and selection helpers methods share (`attention`,
`select`) and the registry of configured methods (`registry`)."""
