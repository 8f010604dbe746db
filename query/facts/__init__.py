"""The stage facts: the query service's derived state, in one place.

Every customer's journey through every map is kept as signed facts in ``stage_facts`` (docs/kpis.md), and
everything that derives, stores or serves them lives here, one job per module:

* :mod:`~query.facts.model` — what the facts are computed against (a project's map and segment versions)
  and what a fact row is;
* :mod:`~query.facts.rule_index` and :mod:`~query.facts.compute` — definitions → facts, as ClickHouse SQL
  (a map's touchpoint rules as one expression; the statements from events to facts);
* :mod:`~query.facts.writer` — writes them: a whole project into a new build, or the difference for some
  customers;
* :mod:`~query.facts.builds` — which build serves a project and what it was computed for, preview builds,
  dropping a build;
* :mod:`~query.facts.locks` — the writers' lock and the lock that makes a KPI answer one state of the facts;
* :mod:`~query.facts.updater` — the background loop that keeps them current.

Readers (KPIs, drill-down, preview, alerts) use the model, the builds and the locks, never the updater.
"""
