"""One run of a job over a JSONL input, from journal to output files."""

from __future__ import annotations

from pathlib import Path

from distributed import Client

from pervade.journal import Journal
from pervade.runtime.driver import Driver, DriverConfig, Observer
from pervade.runtime.inputs import Parser, count_records, read_jsonl
from pervade.runtime.job import Job
from pervade.runtime.output import ResultSink, check_outputs
from pervade.runtime.stats import RunStats


def preflight(job: Job, input_path: Path, output: Path, errors: Path, journal_path: Path) -> None:
    """Everything about the journal and outputs that can fail, checked before any work."""
    journal = Journal(journal_path, job.fingerprint(str(input_path.resolve())))
    try:
        check_outputs(output, errors, journal)
    finally:
        journal.close()


def run_job(
    client: Client,
    job: Job,
    input_path: Path,
    parse: Parser,
    output: Path,
    errors: Path,
    journal_path: Path,
    observer: Observer | None = None,
    config: DriverConfig | None = None,
) -> RunStats:
    """Run `job` over every record of `input_path` not already in the journal."""
    journal = Journal(journal_path, job.fingerprint(str(input_path.resolve())))
    try:
        journal.forget_input_problems()
        sink = ResultSink(output, errors, journal)
        try:
            stats = RunStats(total=count_records(input_path))
            driver = Driver(client, job, journal, sink, stats, config, observer, str(input_path))
            for _batch in driver.run(read_jsonl(input_path, parse)):
                pass
        finally:
            sink.close()
    finally:
        journal.close()
    return stats
