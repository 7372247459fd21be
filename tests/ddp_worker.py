"""Run under `accelerate launch` by tests/test_ddp.py (not a test module).

    ddp_worker.py loop RUN_DIR BATCH ACCUM [MAX_STEPS]   the toy loop (tests/loop_toys.py); under FSDP it
                                                   also checks that the model was sharded (DTensor params)
    ddp_worker.py preference A.yaml [B.yaml ...]   the preference recipe, once per config (one launch)
    ddp_worker.py online A.yaml [B.yaml ...]       an online recipe (rewards from tests/online_toys.py)
    ddp_worker.py cli ARGS...                      the `pluralign` command (its exit code, its error messages)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

if sys.argv[1] == "loop":
    from loop_toys import collate, make_data, make_model, nll_step

    from pluralign.train.loop import LoopConfig, train

    run_dir, batch, accum = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    max_steps = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    # With max_steps (a run stopped early, then extended): a constant rate, so the schedule does not
    # depend on where the run is told to stop.
    schedule = {"scheduler": "constant", "warmup_ratio": 0.0} if max_steps else {"warmup_ratio": 0.25}
    import os

    # the launcher's --mixed_precision (bf16 in bench/gpu_checks.sh), which the loop would otherwise override
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    config = LoopConfig(learning_rate=1e-2, batch_size=batch, grad_accum=accum, num_epochs=2, log_every=1,
                        progress=False, save_every=2, keep_checkpoints=1, max_steps=max_steps, mixed_precision=precision,
                        **schedule)
    model = make_model()
    train(model, make_data(32), collate, nll_step, config, run_dir, eval_dataset=make_data(7, seed=5))
    if os.environ.get("ACCELERATE_USE_FSDP") == "true":
        from torch.distributed.tensor import DTensor

        params = dict(model.named_parameters())
        assert params and all(isinstance(p, DTensor) for p in params.values()), {n: type(p) for n, p in params.items()}
        # Each process holds a shard (dim 0 split across the processes), not a replica.
        import torch.distributed as dist

        w = params["model.layers.0.mlp.up_proj.weight"]
        assert w.to_local().shape[0] * dist.get_world_size() == w.shape[0], (w.to_local().shape, w.shape)
elif sys.argv[1] == "cli":
    from pluralign.cli import main

    sys.exit(main(sys.argv[2:]))
elif sys.argv[1] == "online":
    from pluralign.config import load
    from pluralign.train.recipes.online import OnlineConfig, run

    for path in sys.argv[2:]:
        run(load(OnlineConfig, path))
else:
    from pluralign.config import load
    from pluralign.train.recipes.preference import PreferenceConfig, run

    for path in sys.argv[2:]:
        run(load(PreferenceConfig, path))
