"""Run under `accelerate launch` by tests/test_ddp.py (not a test module).

    ddp_worker.py loop RUN_DIR BATCH ACCUM        the toy loop (tests/loop_toys.py)
    ddp_worker.py preference A.yaml [B.yaml ...]   the preference recipe, once per config (one launch)
    ddp_worker.py online A.yaml [B.yaml ...]       an online recipe (rewards from tests/online_toys.py)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

if sys.argv[1] == "loop":
    from loop_toys import collate, make_data, make_model, nll_step

    from pluralign.train.loop import LoopConfig, train

    run_dir, batch, accum = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    config = LoopConfig(learning_rate=1e-2, batch_size=batch, grad_accum=accum, num_epochs=2, log_every=1,
                        progress=False, save_every=2, keep_checkpoints=1, warmup_ratio=0.25)
    train(make_model(), make_data(32), collate, nll_step, config, run_dir, eval_dataset=make_data(7, seed=5))
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
