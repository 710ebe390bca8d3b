"""Analysis over engines and traces: cost model, race, audit, diff, sampling check, bench."""
