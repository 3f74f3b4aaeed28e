"""Stand-in models trained offline on generated data, so that offline runs mean something.

They sit above both `csp` (the models and the engine they are built from) and `milebench` (the
data and the prompts they are trained on) and below the runner, which builds them on demand:
no module of `csp` imports `milebench`, and nothing here imports the runner.
"""
