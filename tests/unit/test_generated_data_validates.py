"""The simulator's `--faults default` output is healthy-but-imperfect field data: it must validate."""

from shared.ml.dataset import data_files
from shared.ml.spec import default_spec
from shared.ml.validation import validate_bytes


def test_default_faults_pass_validation(small_dataset):
    spec = default_spec()
    files = data_files(small_dataset)
    assert len(files) == 2
    for path in files:
        report = validate_bytes(path.read_bytes(), str(path), spec, turbine_hint=path.parent.name)
        assert report.ok, report.summary()
        assert report.rows > 70_000 and report.sampling_hz is not None and abs(report.sampling_hz - 20) < 1
