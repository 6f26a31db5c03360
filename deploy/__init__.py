"""The registry of evaluated adapters, promotion and rollback, and export to serving (vLLM, transformers).

Modules, in reading order:
    registry.py     versions with manifests, aliases.json (production, previous, history), locks; any fsspec URL
    promote.py      evaluate against production, promote or reject (decision recorded), roll back
    vllm_rules.py   what vLLM refuses to serve as a LoRA adapter, as data
    export.py       production (or any version) as a peft folder or a merged model, with serving.json
    vllm_server.py  the vLLM server's flags, and a local server process for tests and benchmarks
    serving.py      hot-swap an export into a running vLLM server under a versioned name, then the alias
    cli.py          `thumbs evaluate`, `promote`, `rollback`, `registry list`, `export`
"""
