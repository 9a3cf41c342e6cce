"""The human rating kit: studies of people rating a results folder's images, and how far metrics agree with them.

    study.py      a study (YAML) -> the items each rater sees, seeded: main items, repeats, gold items
    db.py         ratings.sqlite: one row per answer (SQLite, WAL), schema versioned
    export.py     answers -> score rows of metric ``human`` (the tidy table picks them up)
    simulate.py   the toy oracle as a rater (``rate --simulate oracle``)
    server.py     the rating page (Starlette + uvicorn, static HTML/JS in static/)
    cli.py        ``python -m harness rate`` and ``python -m harness agreement``

The analysis (win rates, Krippendorff's alpha, metric agreement) is ``harness.agreement``; docs/rating.md
describes the whole kit.
"""
