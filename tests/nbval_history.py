"""A pytest plugin for the nbval run of ``tests/test_determinism.py`` (``-p nbval_history``): execute cells with
``store_history=True``, as the book build does (jupyter-cache and nbclient store history).

nbval 0.11 sends ``store_history=False``. IPython then decides whether a trailing ``;`` suppresses a cell's result
by looking at the last *stored* input, which is another cell's, so ``ax.legend();`` would print
``<matplotlib.legend.Legend ...>`` under nbval and nothing in the book: a difference in nbval, not in the chapter.
"""
from nbval import kernel


def _execute_cell_input(self, cell_input, allow_stdin=None):
    return self.kc.execute(cell_input, store_history=True, allow_stdin=allow_stdin, stop_on_error=False)


kernel.RunningKernel.execute_cell_input = _execute_cell_input
