"""The evaluation package: HEAR-format tasks (reading and synthetic ones), embedding extraction in
hear-eval-kit's format, downstream models, scores and tables. Run from the repository root,
e.g. `python -m eval.run`."""
