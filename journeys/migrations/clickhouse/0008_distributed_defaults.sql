-- On a cluster, inserts go through the Distributed tables, and a Distributed table fills every column an
-- INSERT leaves out with its *own* default before it forwards the row: the shard stores that value and
-- never applies the local table's DEFAULT. 0005 added inserted_at to the Distributed tables without one, so
-- on a cluster every event and identity change was stored with inserted_at = 1970-01-01, and the stage-state
-- updater (which polls inserted_at) never saw a change: KPIs stayed at their last rebuild.
--
-- Stamped by the node that takes the insert, the time runs ahead of the row's arrival on its shard by at
-- most the insert's duration: deploy/cluster inserts with distributed_foreground_insert=1 (with background
-- inserts it would be the Distributed queue's delay). The updater looks back 10 s for such gaps.
-- Clusters that ran 0005-0007: publish a new version of each map once, so that its stage facts are rebuilt.
-- One node: nothing to do (these render to nothing).
{{alter_distributed events MODIFY COLUMN inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)}};
{{alter_distributed identities MODIFY COLUMN inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)}};
