"""The web app's features, one module per tab: each owns its layout (``build(ctx)``), its handlers (plain
functions, UI values in and out) and its computation over the shared :class:`~embedlab.lab.Lab`.

    sides       the side A / side B pickers and their cards (above every tab)
    pairs       Pairs: one pair, a batch of pairs, anisotropy; /compare, /embed; the first visit
    maps        Map: aligned maps of a corpus, what moved, uploads; the map file
    search      Search: top-k under each side
    replay      Training replay (the replays themselves: embedlab/replay.py)
    evaluate    Benchmarks: results, training records, an evaluation now
    howitworks  How it works
    export      below the tabs: use a side outside the lab (the export command; a zip where the host allows it)
    common      what their handlers share: errors, input checks, downloads, the build context
"""
