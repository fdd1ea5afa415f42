"""CompileService on SageMaker Processing: the PyTorch CPU image (the training one) unpacks the project's source
archive and runs `python -m training_jobs.compile` in its Processing layout.

Container layout (what `training_jobs.compile.main` expects when run without --model):

    /opt/ml/processing/input/code        sourcedir.tar.gz (training_jobs/, shared/, requirements.txt at its root)
    /opt/ml/processing/input/model       the version's model.tar.gz (one *.tar.gz)
    /opt/ml/processing/input/validation  the training dataset's files (from its ManifestFile), optional
    /opt/ml/processing/output            model.onnx, then manifest.json -> s3://<bucket>/<output_prefix>

Upload order: with S3UploadMode EndOfJob SageMaker uploads the output directory once the container has exited, and
does not promise any order between files. The job writes manifest.json last locally, but in S3 manifest.json may land
before model.onnx. Whatever keys on manifest.json (the S3 trigger, `describe` below) must therefore check the digests
and sizes of the other artifacts against it before using them; the edge bundle verifier does exactly that.
"""

from __future__ import annotations

import shlex
from typing import Any, cast

from shared.aws.sagemaker_jobs import JOB_STATUSES, SageMakerJobs
from shared.errors import AdapterError, ConfigurationError
from shared.ports import CompileRequest, TrainingJob, TrainingStatus

ML_ROOT = "/opt/ml"
PROCESSING_ROOT = f"{ML_ROOT}/processing"
CODE_DIR = f"{PROCESSING_ROOT}/input/code"
MODEL_DIR = f"{PROCESSING_ROOT}/input/model"
VALIDATION_DIR = f"{PROCESSING_ROOT}/input/validation"
OUTPUT_DIR = f"{PROCESSING_ROOT}/output"
# SageMaker Processing returns the first KB of this file as ExitMessage (DescribeProcessingJob and the state-change
# event). The compile job writes its reason to <output>/failure (training_jobs.compile.FAILURE_FILE); the entrypoint
# copies it here so the reason reaches the caller instead of a bare "AlgorithmError".
MESSAGE_FILE = f"{ML_ROOT}/output/message"
FAILURE_FILE = "failure"
MANIFEST_FILE = "manifest.json"  # shared.ml.bundle.MANIFEST_FILE (not imported: it pulls numpy into the Lambda)
MODULE = "training_jobs.compile"
OUTPUT_NAME = "bundle"
VOLUME_GB = 10
MAX_CONTAINER_STRING = 256  # each ContainerEntrypoint/ContainerArguments entry (botocore does not check maxima)



def container_script(archive: str, ml_root: str = ML_ROOT) -> str:
    """The `sh -c` script: unpack the sources, install their requirements, run the compile job with "$@".

    When any step fails it copies the job's failure file (if one was written) to the ExitMessage file and exits with
    that step's status. Not `exec`: the shell stays PID 1 for that, so a StopProcessingJob reaches python only as the
    final SIGKILL. `ml_root` is /opt/ml in the container (a directory without spaces in tests). Keep it short: each
    ContainerEntrypoint entry is limited to 256 characters.
    """
    return (f"r={shlex.quote(ml_root)}; cd $r/processing/input/code && tar xzf {shlex.quote(archive)} && "
            f'pip install -q -r requirements.txt && python -m {MODULE} "$@" || '
            f"{{ s=$?; mkdir -p $r/output; cp $r/processing/output/{FAILURE_FILE} $r/output/message; exit $s; }}")


def _check_container_strings(strings: list[str], what: str) -> None:
    for s in strings:
        if len(s) > MAX_CONTAINER_STRING:
            raise ConfigurationError(f"{what} entry longer than {MAX_CONTAINER_STRING} characters: {s[:80]}...")


class SageMakerCompile(SageMakerJobs):
    def __init__(self, bucket: str, image_uri: str, role_arn: str, instance_type: str, source_key: str, region: str,
                 client: Any = None, max_runtime_s: int = 1800) -> None:
        if not source_key.endswith(".tar.gz"):
            raise ConfigurationError(f"the source archive must be a .tar.gz, got {source_key}")
        super().__init__(bucket, region, client)
        self.image_uri = image_uri  # the SageMaker PyTorch CPU training image, as for training
        self.role_arn = role_arn
        self.instance_type = instance_type
        self.source_key = source_key  # sourcedir.tar.gz: training_jobs/, shared/, requirements.txt at its root
        self.max_runtime_s = max_runtime_s
        # An S3Prefix input naming one object lands as <LocalPath>/<last segment of the key>.
        self.entrypoint = ["/bin/sh", "-c", container_script(source_key.rsplit("/", 1)[-1]), "compile"]
        _check_container_strings(self.entrypoint, "ContainerEntrypoint")

    def _input(self, name: str, key: str, local_path: str, data_type: str = "S3Prefix") -> dict[str, Any]:
        return {"InputName": name, "S3Input": {
            "S3Uri": self.uri(key), "LocalPath": local_path, "S3DataType": data_type, "S3InputMode": "File",
            "S3DataDistributionType": "FullyReplicated"}}

    def job_request(self, request: CompileRequest) -> dict[str, Any]:
        """The CreateProcessingJob parameters for a request."""
        arguments = ["--model-version", str(request.version), "--model-data", self.uri(request.model_data_key)]
        _check_container_strings(arguments, "ContainerArguments")
        inputs = [self._input("code", self.source_key, CODE_DIR),
                  self._input("model", request.model_data_key, MODEL_DIR)]
        if request.validation_manifest_key:
            inputs.append(self._input("validation", request.validation_manifest_key, VALIDATION_DIR,
                                      "ManifestFile"))
        return {
            "ProcessingJobName": request.job_name,
            "ProcessingResources": {"ClusterConfig": {
                "InstanceCount": 1, "InstanceType": self.instance_type, "VolumeSizeInGB": VOLUME_GB}},
            "StoppingCondition": {"MaxRuntimeInSeconds": self.max_runtime_s},
            "AppSpecification": {"ImageUri": self.image_uri, "ContainerEntrypoint": list(self.entrypoint),
                                 "ContainerArguments": arguments},
            "ProcessingInputs": inputs,
            "ProcessingOutputConfig": {"Outputs": [{"OutputName": OUTPUT_NAME, "S3Output": {
                # No trailing slash: SageMaker joins <S3Uri>/<file>, so compiled/g/3/ would give compiled/g/3//...
                "S3Uri": self.uri(request.output_prefix.rstrip("/")), "LocalPath": OUTPUT_DIR,
                "S3UploadMode": "EndOfJob"}}]},
            "RoleArn": self.role_arn,
            "Environment": {"NACELLE_GROUP": request.group, "NACELLE_MODEL_VERSION": str(request.version)},
            "Tags": [{"Key": "nacelle:group", "Value": request.group},
                     {"Key": "nacelle:model_version", "Value": str(request.version)}],
        }

    def start(self, request: CompileRequest) -> None:
        self.create_job(self.client.create_processing_job, "CreateProcessingJob", request.job_name,
                        self.job_request(request))

    def describe(self, job_name: str) -> TrainingJob:
        job = self.describe_job(self.client.describe_processing_job, "DescribeProcessingJob", job_name,
                                ProcessingJobName=job_name)
        status = str(job["ProcessingJobStatus"])
        if status not in JOB_STATUSES:
            raise AdapterError(f"compile job {job_name} has an unknown status {status}")
        # FailureReason is SageMaker's ("AlgorithmError: ..."); ExitMessage carries the job's own reason.
        reasons = [str(r).strip() for r in (job.get("FailureReason"), job.get("ExitMessage")) if r and str(r).strip()]
        return TrainingJob(
            job_name=job_name,
            status=cast(TrainingStatus, status),
            failure_reason="; ".join(reasons) if status != "Completed" and reasons else None,
            model_artifact_key=self._manifest_key(job_name, job) if status == "Completed" else None,
        )

    def _manifest_key(self, job_name: str, job: dict[str, Any]) -> str:
        """<output_prefix>manifest.json of a completed job (check the other artifacts' digests before use)."""
        outputs = job.get("ProcessingOutputConfig", {}).get("Outputs", [])
        uri = next((str(o.get("S3Output", {}).get("S3Uri", "")) for o in outputs if o.get("OutputName") == OUTPUT_NAME),
                   "")
        prefix = f"s3://{self.bucket}/"
        if not uri.startswith(prefix) or len(uri) == len(prefix):
            raise AdapterError(f"compile job {job_name} has no `{OUTPUT_NAME}` output under {prefix}: {uri or 'none'}")
        return f"{uri[len(prefix):].rstrip('/')}/{MANIFEST_FILE}"
