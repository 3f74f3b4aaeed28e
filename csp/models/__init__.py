"""Model adapters (`adapters`: one interface over LLaVA and InternVL, loaded with
`from_pretrained`), the config entry that picks a checkpoint (`config`), LLaVA-1.5's own
prompt encoding and offline tokenizer, and the tooling that builds the stand-in checkpoints
on demand (`tiny`: random weights, `proxy`: trained on the proxy task set)."""
