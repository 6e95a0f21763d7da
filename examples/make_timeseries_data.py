"""Write small datasets for examples/timeseries_forecast.yaml and examples/tabular_mlp.yaml.

    python examples/make_timeseries_data.py            # writes examples/data/timeseries/
    python examples/make_timeseries_data.py --out DIR --hours 2000 --series 3 --rows 4000

``series.csv``: hourly rows (timestamp, series, value, temperature) of several noisy
series with a daily and a weekly season, plus the mess real exports have: a row whose
timestamp cannot be read, a NaN and an empty value, an infinite temperature, a
duplicated timestamp and two swapped (unsorted) rows. The pipeline drops, imputes,
merges and sorts them by rule, and reports each.

``table.csv``: a classification table (x1..x4, color, size, label) with missing cells,
outliers and a category too rare to keep.

Seeded and offline: the same files on every machine (privet_timeseries.synthetic).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from privet_timeseries.synthetic import seasonal_rows, tabular_rows, write_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "timeseries")
    parser.add_argument("--hours", type=int, default=2000, help="rows per series")
    parser.add_argument("--series", type=int, default=3)
    parser.add_argument("--rows", type=int, default=4000, help="rows of the table")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = seasonal_rows(args.hours, n_series=args.series, seed=args.seed)
    rows[100]["timestamp"] = "31/02/2024 25:00"   # unreadable: dropped as unparseable_timestamp
    rows[200]["value"] = "nan"                    # missing target: interpolated in its series
    rows[300]["value"] = ""
    rows[400]["temperature"] = "inf"              # non-finite covariate: imputed (training mean)
    rows.insert(500, dict(rows[500], value=rows[500]["value"] + 0.5))  # a duplicated timestamp
    rows[600], rows[601] = rows[601], rows[600]   # unsorted rows: sorted per series
    series = write_csv(args.out / "series.csv", rows)
    table = write_csv(args.out / "table.csv", tabular_rows(args.rows, seed=args.seed))
    print(f"wrote {series} ({len(rows)} rows) and {table} ({args.rows} rows)")


if __name__ == "__main__":
    main()
