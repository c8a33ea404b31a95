"""The embedded demo: a synthetic world with a regional-to-global gap, a tiny model pre-trained on it, and
label-free Vision-OPD closing the gap in minutes on a CPU (`vision-opd demo`, docs/demo.md).

world.py (the synthetic world and `vision-opd synth`), pretrain.py (supervised pre-training of the tiny VLM),
accuracy.py (greedy accuracy under one view), arms.py (one Vision-OPD or control run), run.py (`vision-opd demo`:
measure, train, report), study.py (the arms over several seeds). The library core never imports this package.
"""
