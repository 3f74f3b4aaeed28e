"""Model adapters (`adapters`: one interface over LLaVA and InternVL, loaded with
`from_pretrained`), LLaVA-1.5's own
prompt encoding and offline tokenizer, and the tooling that builds the stand-in checkpoints
on demand (`tiny`: random weights; standins/ holds the trained ones)."""
