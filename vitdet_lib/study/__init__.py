"""The study: profiles of runs as data (``profile``), the tuning sweep (``sweep``), result
records (``records``), the papermill runner (``runner``), the functions the experiment
notebooks call (``tasks``), and the aggregation into the paper's tables and figures
(``aggregate``, ``plots``, with the paper's own numbers in ``paper``)."""
