"""The GPU check behind ``python -m benchmarks.gpu_check`` (the command: ``benchmarks.gpu_check``).

- ``harness``: ``PartContext``, ``CheckFailed``, ``run_part`` (one part in a child process
  with its own time limit, its process group killed when it ends) and ``run_check`` (the
  parts in order; report.json, summary.md and logs.txt rewritten after every part).
- ``parts``: the part functions ``part_env``, ``part_cuda_tests``, ``part_compare``,
  ``part_oracles``, ``part_figure2``, ``part_weak_error``, ``part_training``, ``part_ddp``.
- ``report``: ``format_summary`` (report.json → summary.md).
"""
