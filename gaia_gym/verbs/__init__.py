"""The user-facing verbs behind `gaia-gym demo / imagine / play / bench / pretrain`: library functions
the CLI shells call (`imagine.imagine`, `play.play`, `bench.run_bench`, `pretrain.pretrain`)."""
