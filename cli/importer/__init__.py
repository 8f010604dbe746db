"""``journeys import FILE``: historical events from a CSV or NDJSON file (gzip'd or not) into a project.

The file is read a chunk at a time (a few MB of rows) in a reader thread that turns rows into Segment
events, while the main thread sends the previous chunk to the collector's ``POST /v1/import``
(collector/imports.py): the CLI's conversion and the collector's validation overlap, and memory holds
two chunks whatever the file's size.

Rows become events through a mapping (docs/import.md): ``--map userId=customer_no`` takes a column,
``--map event=:Store Purchase`` a constant; columns named like an event field (``userId`` or
``user_id``, ``timestamp``, ``event``, ``channel``, …) map themselves, ``properties.x``/``traits.x``/
``context.x`` columns go there, and every other column becomes a property (a trait for identify and
group events), numbers as numbers. Timestamps are ISO 8601 or epoch seconds/milliseconds.

Bad rows are reported by their line in the *original file*: the CLI refuses what it cannot convert
(an unreadable timestamp, a row with the wrong number of fields) and maps the collector's per-line
errors back through each chunk's line table. A collector that is restarting or whose spool is full is
waited for and the chunk resent from its last durable line; re-sending is safe because every event has a
deterministic id (its messageId, or one the collector derives from its content).

The package follows the import's seams: :mod:`.reading` (the file, a chunk at a time, in a thread),
:mod:`.mapping` (rows to events), :mod:`.sender` (``POST /v1/import`` with retry), :mod:`.progress` (what
the terminal shows) and :mod:`.command` (the options, the pipeline, the summary). The demo
(cli/demo.py) imports its store CSV with the same reading, mapping and sender.
"""
