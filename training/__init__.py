"""QLoRA KTO training of a LoRA adapter on a snapshot's train split (torch, transformers, peft, bitsandbytes).

Modules, in reading order:
    loss.py         the KTO loss and the z0 estimate: pure math over log-probs (the paper's eq. 7)
    logprobs.py     summed completion log-probs from hidden states, chunked, fused frozen-head gradient
    sequences.py    rendering with the chat template, joint tokenization, the completion span, truncation
    data.py         a split's examples as token ids (Encoded: flat int32 arrays), padded micro-batch tensors
    tokencache.py   a split's token ids, encoded once per snapshot and tokenizer, memory-mapped from beside it
    plan.py         the epoch's micro-batches (never one example or one prompt), the z0 derangement, and Plan:
                    which micro-batches each process trains on at each step, and z0's pairs in each
    model.py        the NF4/unquantised base with LoRA, the head's semantics, the Scorer (reference = adapter off)
    refcache.py     reference log-probs, computed once per snapshot and base, cached beside the snapshot
    config.py       TrainConfig, the typed config (defaults written out in kto.yaml)
    checkpoint.py   resumable checkpoints (adapter, optimizer, scheduler, RNG)
    distributed.py  data parallel under torchrun / accelerate
    run_folder.py   a run's folder on disk: adapter, metrics.jsonl, thumbs_meta.json (read by evaluation, deploy)
    trainer.py      setup → fit → finish: the run, with progress and a summary
    inspection.py   `thumbs inspect`: the rendered training sequences with the completion span marked
    cli.py          the `thumbs train` and `thumbs inspect` commands
"""
