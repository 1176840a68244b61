"""The evaluation package: HEAR tasks in, scores and tables out, for any HEAR 2021 module. Run from the
repository root, e.g. `python -m eval.run`.

    tasks.py          task folders (hear-preprocess layout): read, written, digests; the HEAR 2021 task specs
    sounds.py, synthetic.py   offline sounds from Debian packages; the small synthetic tasks
    embed.py          any HEAR module's embeddings of every task, in hear-eval-kit's on-disk format
    embedded.py       that format read back into one split type (TaskData, SplitData)
    metrics.py, scoring.py    the HEAR scores; scoring predictions, event post-processing
    linear_probe.py   logistic regression on the embeddings
    mlp.py, hear_protocol.py  the batched MLP; hear-eval-kit's downstream protocol
    statistics.py     scores over folds and seeds
    report.py         tables and chart beside the HEAR 2021 leaderboard
    baselines.py      the model card's references as a HEAR module (log-mel statistics, random weights)
    run.py, predict.py        the commands: the whole evaluation; hear-eval-kit's predictions runner
    data.py           the command that fetches the HEAR 2021 tasks (Zenodo) and checkpoints, and writes rate folders
    papers.py, reproduce.py   published results (checkpoint, options, tasks); a paper's table in one command
"""
