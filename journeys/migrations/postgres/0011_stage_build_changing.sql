-- A change of the serving build's facts in place (a window edit's corrections, a rule edit's customers moved in:
-- query/facts/updater.py) under way for the definitions named here: set before its first write, cleared by the
-- relabel that ends it (or by another build switching in). Set while the build still serves other definitions,
-- the change stopped half-way (an error, a crash): its facts may hold some of it, so nothing reuses them — no
-- relabel, no copy, no second change in place, no preview from them; the next computation reads the events, and
-- the build serves until it is replaced.
ALTER TABLE stage_state_builds ADD COLUMN IF NOT EXISTS changing_to text;
