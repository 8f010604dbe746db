-- Identity stitching: which customer each distinct id (anonymous id or user id) belongs to.
--
-- Written only by the collector's IdentityGraph (collector/identity.py), one row per change, with a
-- version that grows; the current mapping of an id is argMax(customer_id, version). An id with no row is
-- its own customer. Reads never depend on ReplacingMergeTree merges: they take argMax explicitly.
-- identities answers "whose is this id?"; identities_by_customer answers "which ids are this customer's?"
-- (its rows can be stale after a later merge, so readers confirm each id against identities).
CREATE TABLE IF NOT EXISTS {{table identities}} {{on_cluster}}
(
    project_id   LowCardinality(String),
    distinct_id  String,
    customer_id  String,
    version      UInt64,
    is_deleted   UInt8 DEFAULT 0
)
ENGINE = {{engine ReplacingMergeTree(version)}}
ORDER BY (project_id, distinct_id);

{{distributed identities cityHash64(project_id, distinct_id)}};

CREATE TABLE IF NOT EXISTS {{table identities_by_customer}} {{on_cluster}}
(
    project_id   LowCardinality(String),
    customer_id  String,
    distinct_id  String,
    version      UInt64,
    is_deleted   UInt8 DEFAULT 0
)
ENGINE = {{engine ReplacingMergeTree(version)}}
ORDER BY (project_id, customer_id, distinct_id);

{{distributed identities_by_customer cityHash64(project_id, customer_id)}};
