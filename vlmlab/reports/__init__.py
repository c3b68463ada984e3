r"""The paper's tables and figures from a sweep's result records (vlmlab.runs.record), on pandas.

`frame.records_frame` turns the records into one DataFrame (`pandas.json_normalize`: config keys as dotted
columns, metrics flattened); each layout filters, groups and pivots it into a `table.Table` of DataFrames,
which pandas writes as Markdown (tabulate), CSV and LaTeX (Styler).

Layouts
-------
`layouts.design_table` builds Tables 1-5 (per-benchmark columns, In-domain / Out-of-domain / overall averages,
rows grouped by config keys) and Table 2 (`pivot=` a key such as model.fusion: its values become column
groups of the three averages). `layouts.transfer_table` builds Tables 6-7 for one evaluation modality: rows
tokenizer x fusion, columns task x {InD, OOD} x {No Train, same-modality, cross-modality}, plus a chance
row and a row per trivial baseline (the records' `baselines`). `layouts.scaling_table` is the data behind
Figure 2 (rows = series x backbone, the best value marked per backbone size). `open_weight.open_weight_sft_table`
builds Table 8 (fine-tuned on VQA; columns VQA InD/OOD then TQA InD/OOD) and Table 9 (on TQA; TQA columns
first), rows dataset x model, each cell the SFT score with its change from the base model in parentheses
("98.6 (+18.4)": points, sign always shown, the difference of the two values as displayed, so that the
printed numbers add up; CSV: a `<column>_delta` column, two decimals), best per column within each
dataset in bold; `open_weight_rl_table` builds Table 10/11 for one model: rows the four test splits,
column groups per dataset {Base, SFT, RL}, SFT and RL with their change from Base, the higher of the two
bold; `open_weight_tables` gives all of them (a Table 10/11 per model with a grpo record). A change needs
the base score: without one the cell shows the score alone (and a note says so). Every `table.Table` renders to
Markdown, CSV and LaTeX; `plots` draws Figures 2, 4-5 and the design bars, `cli` is `vlmlab results`.

Conventions (deliberate, so that missing work can never read as a result):
  * scores are shown in %, one decimal; a missing run or benchmark is a gap ("–" in Markdown, "--" in
    LaTeX, an empty CSV cell), never 0;
  * averages: In-domain = mean over the in-domain benchmarks that appear anywhere in the gathered records,
    Out-of-domain likewise, overall = mean over all of them (as the paper's "Average All", not the mean of
    the two averages). A row missing one of those benchmarks gets NO average (a gap) by default; with
    `partial_averages=True` it gets the mean of what it has, marked "†" (CSV: listed in a `partial` column)
    and excluded from the best-per-column marking;
  * when several records fall into one row (e.g. tokenizers averaged, as in Table 2), cells are their mean;
    a benchmark missing from any of them makes that cell a gap too (or partial, as above);
  * the best value per column is bold (Markdown/LaTeX; CSV: a `best` column listing the columns where the
    row is best), compared at the displayed precision so ties are all marked;
  * 95 % confidence intervals, where the records carry them, follow the value: Markdown `48.5 [41.6, 55.4]`
    (in %, one decimal; brackets, not ±, since Wilson and bootstrap intervals are not symmetric), LaTeX
    the same with the brackets in a smaller font (scriptsize), CSV in the columns `<column>_lo` and
    `<column>_hi` after each value column (always present, empty without an interval). A cell from one
    record shows that record's interval (Wilson for 0/1 outcomes, percentile bootstrap for soft scores:
    vlmlab.scoring.intervals). A cell averaging several results (records of one row, benchmarks of an
    average, `Table.collapse`) shows the Wilson interval of their pooled samples when every one records
    its 0/1 outcomes ("correct") on the same number of samples, so that the pooled proportion IS the
    displayed mean (the pooled samples are treated as independent; the same items answered by several
    models are not, so read it as the uncertainty over the items); otherwise, and for partial averages,
    it has no interval. The chance row has none. A note under the table says so whenever one is shown.
LaTeX output uses booktabs rules (and graphicx's \resizebox for wide tables).
"""
