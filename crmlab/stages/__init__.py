"""Stage functions: everything a scheduled run needs from a stage, called by its notebook.

Each ``run_<stage>(ctx)`` takes the stage's :class:`~crmlab.pipeline.StageContext`, reads what it
needs through it, writes the artifacts later stages read and returns what the notebook reports on.
A notebook adds explanation and plots, never something a later stage reads.
"""
