"""hear-eval-kit 2021.1.3's own predictions code, asked what it does; run in its pinned environment
(tests/heareval_env.py) by tests/heareval_reference.oracle:

    python tests/heareval_oracle.py COMMAND ARGS.json ANSWER.json

grid         the grid points task_predictions trains, for given metadata, grid name and seed
loader       the training batches of a task's first data split, from its own dataloader, twice (two epochs)
rank         the order sort_grid_points puts validation scores in
postprocess  per post-processing option, the events get_events_for_all_files makes, and the option an
             EventPredictionModel's validation epoch end picks
"""
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch
from heareval.predictions import task_predictions as tp
from heareval.score import available_scores, label_vocab_as_dict
from pytorch_lightning import seed_everything


class Stop(Exception):
    pass


def name(value):
    """A grid value as eval.hear_protocol names it: classes and functions by name, without a trailing _."""
    return value.__name__.rstrip("_") if callable(value) else value


def grid(args):
    answers = []
    for case in args["cases"]:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp)
            (path / "task_metadata.json").write_text(json.dumps(case["metadata"]))
            (path / "labelvocabulary.csv").write_text("idx,label\n0,a\n1,b\n")
            trained = []

            def record(**kwargs):
                trained.append({k: name(v) for k, v in kwargs["conf"].items()})
                if len(trained) == case["n"]:
                    raise Stop
                return tp.GridPointResult(predictor=None, model_path="", epoch=0, time_in_min=0.0, hparams={},
                                          postprocessing=(), trainer=None, validation_score=0.0, score_mode="max",
                                          conf=kwargs["conf"])

            tp.task_predictions_train = record
            tp.seed_everything = lambda seed, workers=False: seed_everything(case["seed"], workers=workers)
            try:
                tp.task_predictions(embedding_path=path, embedding_size=8, grid_points=case["n"], gpus=None,
                                    in_memory=True, deterministic=True, grid=case["grid"],
                                    logger=logging.getLogger("oracle"))
            except Stop:
                pass
            answers.append(trained)
    return answers


def loader(args):
    path = Path(args["task_dir"])
    metadata = json.loads((path / "task_metadata.json").read_text())
    split = tp.get_splits_from_metadata(metadata)[0]
    label_vocab, nlabels = tp.label_vocab_nlabels(path)
    label_to_idx = label_vocab_as_dict(label_vocab, key="label", value="idx")
    data = tp.dataloader_from_split_name(split["train"], path, label_to_idx, nlabels, metadata["embedding_type"],
                                         batch_size=args["batch_size"], in_memory=True, metadata=False)
    epochs = [[(x.tolist(), y.tolist()) for x, y, _ in data] for _ in range(2)]
    return {"train_splits": split["train"], "epochs": epochs}


def rank(args):
    answers = []
    for case in args["cases"]:
        results = [tp.GridPointResult(predictor=None, model_path="", epoch=0, time_in_min=0.0, hparams={},
                                      postprocessing=(), trainer=None, validation_score=score,
                                      score_mode=case["mode"], conf={"index": i})
                   for i, score in enumerate(case["scores"])]
        answers.append([r.conf["index"] for r in tp.sort_grid_points(results)])
    return answers


def postprocess(args):
    answers = []
    for case in args["cases"]:
        label_to_idx = {label: i for i, label in enumerate(case["labels"])}
        idx_to_label = {i: label for label, i in label_to_idx.items()}
        predictions = torch.tensor(case["predictions"])
        timestamps = torch.tensor(case["timestamps"])
        events = tp.get_events_for_all_files(predictions, case["filenames"], timestamps, idx_to_label, case["grid"])
        conf = {k: v[0] for k, v in tp.PARAM_GRID.items()}
        model = tp.EventPredictionModel(
            nfeatures=4, label_to_idx=label_to_idx, nlabels=len(label_to_idx), prediction_type="multilabel",
            scores=[available_scores[e](label_to_idx=label_to_idx) for e in case["evaluation"]],
            validation_target_events=case["target_events"], test_target_events=case["target_events"],
            postprocessing_grid=case["grid"], conf=conf)
        model._score_epoch_end("val", [{"target": torch.zeros_like(predictions), "prediction": predictions,
                                        "prediction_logit": predictions, "filename": case["filenames"],
                                        "timestamp": timestamps}])
        answers.append({"events": [[list(option), {f: [{"label": e["label"], "start": float(e["start"]),
                                                          "end": float(e["end"])} for e in file_events]
                                                     for f, file_events in by_file.items()}]
                                   for option, by_file in events.items()],
                        "chosen": [list(p) for p in model.epoch_best_postprocessing[0]]})
    return answers


if __name__ == "__main__":
    command, args_path, answer_path = sys.argv[1:]
    answer = {"grid": grid, "loader": loader, "rank": rank, "postprocess": postprocess}[command](
        json.loads(Path(args_path).read_text()))
    Path(answer_path).write_text(json.dumps(answer))
