-- The generation of each write to ClickHouse's stage_inputs (query/stage_state.py): readers and merges keep
-- a customer's row with the greatest one, so a later write must get a greater number whichever process
-- makes it (the updater, a new leader after a failover, a forget in any query service). Writers take it
-- while holding the project's facts lock, which orders them; a host's clock would not.
CREATE SEQUENCE IF NOT EXISTS stage_inputs_generation;
