"""The synthesized stack: what each resource promises, checked on the template (no AWS account)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from infra_helpers import ROOT, Synth, definition, render

STACK, VARIANT = "cubeless", "cubeless-alt"
WORKER_RETRY_ERRORS = {
    "Lambda.TooManyRequestsException",
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
}
#: Actions AWS offers no resource-level permission for: the only ones allowed on Resource "*".
RESOURCE_STAR_OK = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
}


def template(synth: Synth, stack: str = STACK):  # noqa: ANN201
    from aws_cdk.assertions import Template  # loads jsii: only in the tests that use it

    return Template.from_json(synth.templates[stack])


def functions(synth: Synth, stack: str = STACK) -> dict[str, dict]:
    return {k: v for k, v in synth.resources(stack, "AWS::Lambda::Function").items()}


def fn(synth: Synth, prefix: str, stack: str = STACK) -> dict:
    (found,) = [v for k, v in functions(synth, stack).items() if k.startswith(f"Functions{prefix}")]
    return found


def as_list(x: object) -> list:
    return x if isinstance(x, list) else [x]


# -- functions -------------------------------------------------------------------------------------


def test_worker_is_a_container_image_with_a_90s_timeout(synth: Synth) -> None:
    from aws_cdk.assertions import Match

    template(synth).has_resource_properties(
        "AWS::Lambda::Function",
        {
            "PackageType": "Image",
            "Timeout": 90,
            "MemorySize": 2048,
            "Architectures": ["arm64"],
            "TracingConfig": {"Mode": "Active"},
            "Environment": {"Variables": Match.object_like({"POWERTOOLS_SERVICE_NAME": "worker", "CUBELESS_LANES": "900"})},
        },
    )
    worker = fn(synth, "Worker", VARIANT)
    assert worker["Properties"]["Architectures"] == ["x86_64"]


def test_commit_is_sized_for_a_100000_fork_icechunk_run(synth: Synth) -> None:
    """infra/settings.py's commit_memory_mb and the commit's timeout come from bench 9c/9d; a change
    to either should come with a new measurement."""
    props = fn(synth, "Commit")["Properties"]
    assert props["MemorySize"] == 1024 and props["Timeout"] == 600


def test_worker_image_is_staged_from_the_repo_root_not_built(synth: Synth) -> None:
    assets = json.loads((synth.outdir / f"{STACK}.assets.json").read_text())
    (image,) = assets["dockerImages"].values()
    source = image["source"]
    assert source["dockerFile"] == "containers/worker/Dockerfile" and source["platform"] == "linux/arm64"
    staged = synth.outdir / source["directory"]
    top = {p.name for p in staged.iterdir()}
    assert {"cubeless", "lambdas", "constraints.txt", "pyproject.toml", "containers"} <= top
    assert not top & {".venv", "node_modules", "tests", "cdk.out", ".cache", ".git", "infra"}
    assert not list(staged.rglob("__pycache__"))


def test_dockerfile_uses_the_lambda_base_the_constraints_and_checks_the_import() -> None:
    lines = [ln.strip() for ln in (ROOT / "containers/worker/Dockerfile").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "FROM public.ecr.aws/lambda/python:3.12"
    text = "\n".join(lines)
    assert "-c /tmp/src/constraints.txt" in text and "COPY constraints.txt" in text
    assert 'CMD ["lambdas.worker.handler"]' in text
    assert "p['optional-dependencies']['map']" in text  # rio-tiler, rioxarray: the tile function's
    assert lines[-1].startswith('RUN python -c "import lambdas.worker, lambdas.tiles, cubeless.tiles;')
    assert "check_web_assets()" in lines[-1]  # the map page's MapLibre is in the image


def test_planner_and_commit_are_zip_functions_on_the_layer(synth: Synth) -> None:
    for name, handler in (("Planner", "lambdas.planner.handler"), ("Commit", "lambdas.commit.handler")):
        props = fn(synth, name)["Properties"]
        assert props["Runtime"] == "python3.12" and props["Handler"] == handler
        assert props["Architectures"] == ["arm64"]
        (layer,) = props["Layers"]
        assert synth.templates[STACK]["Resources"][layer["Ref"]]["Type"] == "AWS::Lambda::LayerVersion"
        assert props["TracingConfig"] == {"Mode": "Active"}


def test_handler_asset_holds_only_the_handlers(synth: Synth) -> None:
    code = fn(synth, "Planner")["Properties"]["Code"]
    asset_key = render(code["S3Key"], synth.templates[STACK]).removesuffix(".zip")
    staged = synth.outdir / f"asset.{asset_key}"
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    assert files and all(f.startswith("lambdas/") and f.endswith(".py") for f in files)
    assert "lambdas/planner.py" in files and "lambdas/observability.py" in files


def test_every_function_has_its_own_role_and_log_group(synth: Synth) -> None:
    fns = functions(synth).values()
    roles = {json.dumps(f["Properties"]["Role"]) for f in fns}
    logs = {json.dumps(f["Properties"]["LoggingConfig"]["LogGroup"]) for f in fns}
    assert len(fns) == len(roles) == len(logs) == 5  # planner, worker, progress, commit, tiles
    for role in synth.resources(STACK, "AWS::IAM::Role").values():
        assert "ManagedPolicyArns" not in role["Properties"]


# -- tiles -----------------------------------------------------------------------------------------


def tiles_fn(synth: Synth, stack: str = STACK) -> dict:
    (found,) = [v for k, v in functions(synth, stack).items() if k.startswith("TilesFunction")]
    return found


def test_tiles_is_the_worker_image_with_the_tiles_handler(synth: Synth) -> None:
    props = tiles_fn(synth)["Properties"]
    assert props["PackageType"] == "Image" and props["ImageConfig"] == {"Command": ["lambdas.tiles.handler"]}
    assert props["Code"] == fn(synth, "Worker")["Properties"]["Code"]  # one image, built once
    assert props["Architectures"] == ["arm64"] and props["Timeout"] == 30 and props["MemorySize"] == 1024
    assert props["TracingConfig"] == {"Mode": "Active"} and "ReservedConcurrentExecutions" not in props
    env = props["Environment"]["Variables"]
    assert set(env) == {"CUBELESS_BUCKET", "POWERTOOLS_SERVICE_NAME", "POWERTOOLS_LOG_LEVEL"}  # no queue, no state machine
    assert env["POWERTOOLS_SERVICE_NAME"] == "tiles"
    variant = tiles_fn(synth, VARIANT)["Properties"]
    assert variant["Architectures"] == ["x86_64"] and variant["ReservedConcurrentExecutions"] == 3
    assert variant["Environment"]["Variables"]["CUBELESS_BUCKET"] == "existing-cubes"


def test_tiles_url_is_private_by_default_and_public_only_with_the_setting(synth: Synth) -> None:
    for stack, auth in ((STACK, "AWS_IAM"), (VARIANT, "NONE")):
        (url,) = synth.resources(stack, "AWS::Lambda::Url").values()
        assert url["Properties"]["AuthType"] == auth
        assert url["Properties"]["TargetFunctionArn"]["Fn::GetAtt"][0].startswith("TilesFunction")
        anyone = [p["Properties"] for p in synth.resources(stack, "AWS::Lambda::Permission").values() if p["Properties"]["Principal"] == "*"]
        if auth == "AWS_IAM":
            assert anyone == []  # only identities granted lambda:InvokeFunctionUrl may call it
        else:
            assert anyone and all(p["FunctionName"]["Fn::GetAtt"][0].startswith("TilesFunction") for p in anyone)
            assert {p["Action"] for p in anyone} >= {"lambda:InvokeFunctionUrl"}
        out = synth.templates[stack]["Outputs"]
        assert out["TilesUrl"]["Value"] == {"Fn::GetAtt": [next(iter(synth.resources(stack, "AWS::Lambda::Url"))), "FunctionUrl"]}
        assert out["TilesFunctionArn"]["Value"]["Fn::GetAtt"][0].startswith("TilesFunction")


@pytest.mark.parametrize("stack", [STACK, VARIANT])
def test_tiles_role_only_reads_the_bucket(synth: Synth, stack: str) -> None:
    t = synth.templates[stack]
    bucket = "existing-cubes" if stack == VARIANT else next(iter(synth.resources(STACK, "AWS::S3::Bucket"))).lower()
    found = [st for logical, st in statements(synth, stack) if logical.startswith("TilesFunctionRole")]
    actions = {a for st in found for a in as_list(st["Action"])}
    assert {a for a in actions if a.startswith("s3:")} == {"s3:GetObject", "s3:ListBucket"}
    assert actions - {"s3:GetObject", "s3:ListBucket"} <= {"logs:CreateLogStream", "logs:PutLogEvents", "xray:PutTraceSegments", "xray:PutTelemetryRecords"}
    for st in found:
        if any(a.startswith("s3:") for a in as_list(st["Action"])):
            expected = {f"arn:aws:s3:::{bucket}/*"} if as_list(st["Action"]) == ["s3:GetObject"] else {f"arn:aws:s3:::{bucket}"}
            assert set(as_list(render(st["Resource"], t))) == expected, st


# -- queue, bucket ---------------------------------------------------------------------------------


def test_queue_redrives_to_the_dlq_after_6_receives_and_outlives_the_worker(synth: Synth) -> None:
    queues = synth.resources(STACK, "AWS::SQS::Queue")
    (main,) = [q for q in queues.values() if "RedrivePolicy" in q["Properties"]]
    props = main["Properties"]
    assert props["RedrivePolicy"]["maxReceiveCount"] == 6
    dlq_id = props["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
    assert queues[dlq_id]["Type"] == "AWS::SQS::Queue"
    assert props["VisibilityTimeout"] > 90
    for q in queues.values():
        assert q["Properties"]["SqsManagedSseEnabled"] is True
    for policy in synth.resources(STACK, "AWS::SQS::QueuePolicy").values():
        (st,) = policy["Properties"]["PolicyDocument"]["Statement"]
        assert st["Effect"] == "Deny" and st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert len(synth.resources(STACK, "AWS::SQS::QueuePolicy")) == 2


def test_bucket_is_encrypted_private_and_tls_only(synth: Synth) -> None:
    (bucket,) = synth.resources(STACK, "AWS::S3::Bucket").values()
    props = bucket["Properties"]
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["DeletionPolicy"] == "Retain"
    (policy,) = synth.resources(STACK, "AWS::S3::BucketPolicy").values()
    (st,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert st["Effect"] == "Deny" and st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_existing_bucket_is_used_not_created(synth: Synth) -> None:
    assert synth.resources(VARIANT, "AWS::S3::Bucket") == {}
    worker = fn(synth, "Worker", VARIANT)["Properties"]["Environment"]["Variables"]
    assert worker["CUBELESS_BUCKET"] == "existing-cubes" and worker["CUBELESS_MAX_LANES"] == "10"
    policies = json.dumps(render([p["Properties"] for p in synth.resources(VARIANT, "AWS::IAM::Policy").values()], synth.templates[VARIANT]))
    assert "arn:aws:s3:::existing-cubes/*" in policies


# -- IAM -------------------------------------------------------------------------------------------


def statements(synth: Synth, stack: str):  # noqa: ANN201
    for logical, res in synth.templates[stack]["Resources"].items():
        if res["Type"] == "AWS::IAM::Policy":
            for st in res["Properties"]["PolicyDocument"]["Statement"]:
                yield logical, st
        if res["Type"] == "AWS::IAM::Role":
            for p in res["Properties"].get("Policies", []):
                for st in p["PolicyDocument"]["Statement"]:
                    yield logical, st


@pytest.mark.parametrize("stack", [STACK, VARIANT])
def test_iam_is_scoped(synth: Synth, stack: str) -> None:
    seen = 0
    for logical, st in statements(synth, stack):
        seen += 1
        actions = as_list(st["Action"])
        assert st["Effect"] == "Allow"
        assert not [a for a in actions if a == "*" or a.endswith(":*")], f"{logical}: wildcard action {actions}"
        if "*" in as_list(st["Resource"]):
            assert set(actions) <= RESOURCE_STAR_OK, f"{logical}: {actions} on Resource *"
    assert seen > 10


def test_functions_get_only_what_they_use(synth: Synth) -> None:
    t = synth.templates[STACK]
    by_role = {}
    for logical, st in statements(synth, STACK):
        by_role.setdefault(logical, set()).update(as_list(st["Action"]))
    worker = next(v for k, v in by_role.items() if k.startswith("FunctionsWorkerRole"))
    planner = next(v for k, v in by_role.items() if k.startswith("FunctionsPlannerRole"))
    commit = next(v for k, v in by_role.items() if k.startswith("FunctionsCommitRole"))
    progress = next(v for k, v in by_role.items() if k.startswith("FunctionsProgressRole"))
    s3 = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListBucket"}
    assert s3 <= worker and s3 <= planner and s3 <= commit and s3 <= progress
    assert "sqs:SendMessage" in planner and "sqs:SendMessage" not in commit | progress
    # The worker sends only to the dead-letter queue (a failed last try is parked at once).
    (dlq,) = [k for k, q in synth.resources(STACK, "AWS::SQS::Queue").items() if "RedrivePolicy" not in q["Properties"]]
    sends = [st for logical, st in statements(synth, STACK) if logical.startswith("FunctionsWorkerRole") and "sqs:SendMessage" in as_list(st["Action"])]
    assert sends and all(json.dumps(st["Resource"]) == json.dumps({"Fn::GetAtt": [dlq, "Arn"]}) for st in sends), sends
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"} <= worker
    assert not {"sqs:ReceiveMessage", "sqs:DeleteMessage"} & (planner | commit | progress)
    assert {a for a in commit | progress if a.startswith("sqs:")} == {"sqs:GetQueueAttributes"}
    assert t  # the template was read


# -- state machine ---------------------------------------------------------------------------------


def test_state_machine_is_standard_logged_and_traced(synth: Synth) -> None:
    (sm,) = synth.resources(STACK, "AWS::StepFunctions::StateMachine").values()
    props = sm["Properties"]
    assert props["StateMachineType"] == "STANDARD"
    assert props["TracingConfiguration"] == {"Enabled": True}
    assert props["LoggingConfiguration"]["Level"] == "ALL" and props["LoggingConfiguration"]["IncludeExecutionData"] is True


def _walk(states: dict) -> list[tuple[str, dict]]:
    out = []
    for name, st in states.items():
        out.append((name, st))
        if "ItemProcessor" in st:
            out += _walk(st["ItemProcessor"]["States"])
    return out


def test_rounds_of_a_distributed_map_of_short_worker_lanes(synth: Synth) -> None:
    d = definition(synth.templates[STACK])
    states = d["States"]
    workers = states["Workers"]
    assert workers["Type"] == "Map" and workers["ItemsPath"] == "$.progress.lanes"
    assert workers["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    assert workers["MaxConcurrency"] == 1000
    assert isinstance(workers["ToleratedFailurePercentage"], (int, float)) and workers["ToleratedFailurePercentage"] == 100.0
    inner = workers["ItemProcessor"]["States"]
    work = inner["Work"]
    assert work["TimeoutSeconds"] == 90 and work["Resource"].endswith(":function:" + next(iter(k for k in functions(synth) if k.startswith("FunctionsWorker"))))
    (retry,) = work["Retry"]
    assert retry["MaxAttempts"] == 5 and retry["BackoffRate"] == 2 and retry["JitterStrategy"] == "FULL"
    assert set(retry["ErrorEquals"]) == WORKER_RETRY_ERRORS  # Lambda service errors only: tasks never raise
    assert work["Catch"][0]["ErrorEquals"] == ["States.ALL"] and inner[work["Catch"][0]["Next"]]["Type"] == "Succeed"
    choice = inner[work["Next"]]
    assert choice["Type"] == "Choice" and choice["Choices"] == [{"Variable": "$.more", "BooleanEquals": True, "Next": "Work"}]
    assert inner[choice["Default"]] == {"Type": "Succeed", "OutputPath": "$.lane", "Comment": inner[choice["Default"]]["Comment"]}
    # The round loop: Workers -> Progress -> Complete? -> (Next round -> Workers | Commit).
    assert workers["Next"] == "Progress" and states["Progress"]["ResultPath"] == "$.progress"
    assert states["Progress"]["Catch"][0]["ErrorEquals"] == ["RunStalled"]
    complete = states[states["Progress"]["Next"]]
    assert complete["Choices"] == [{"Variable": "$.progress.complete", "BooleanEquals": True, "Next": "Commit"}]
    wait = states[complete["Default"]]
    assert wait == {"Type": "Wait", "Seconds": 10, "Next": "Workers", "Comment": wait["Comment"]}
    # No per-task loop in the parent: the only cycle goes through the Map (one round, many tasks).
    into = {n for n, st in states.items() if st.get("Next") == "Workers" or st.get("Default") == "Workers"}
    assert into == {"Next round", "Anything to do?"} and states["Anything to do?"]["Default"] == "Workers"
    variant = definition(synth.templates[VARIANT])["States"]["Workers"]
    assert variant["MaxConcurrency"] == 10 and variant["ToleratedFailurePercentage"] == 12.5


def test_plan_and_commit_fail_with_a_one_line_cause(synth: Synth) -> None:
    states = definition(synth.templates[STACK])["States"]
    assert states["Plan"]["Catch"][0]["ErrorEquals"] == ["SpecError", "PlanError", "ConfigError", "CubeLocked"]
    assert states["Plan"]["Catch"][0]["Next"] == "Explain"  # failed before the lock was ours: nothing to release
    assert states["Anything to do?"]["Choices"][0] == {"Variable": "$.run", "IsNull": True, "Next": "Up to date"}
    commit = states["Commit"]
    assert not any("TasksPending" in r["ErrorEquals"] for r in commit["Retry"])  # judged once, when every task is settled
    assert commit["Catch"][0]["ErrorEquals"] == ["RunIncomplete", "TasksPending", "CubeLocked"]
    release = states[commit["Catch"][0]["Next"]]
    explain = states[release["Next"]]
    assert explain["Parameters"]["cause.$"] == "States.StringToJson($.error.Cause)"
    assert states[explain["Next"]] == {"Type": "Fail", "ErrorPath": "$.error", "CausePath": "$.cause.errorMessage"}
    assert states[commit["Next"]]["Type"] == "Succeed"


def test_one_execution_per_cube_the_lock_is_taken_by_the_plan_and_released_on_every_failure_path(synth: Synth) -> None:
    d = definition(synth.templates[STACK])
    states = d["States"]
    planner, commit = (next(k for k in functions(synth) if k.startswith(f"Functions{p}")) for p in ("Planner", "Commit"))
    # The planner gets the execution input as started and the execution that takes the lock.
    assert states["Plan"]["Resource"].endswith(f":function:{planner}")
    assert states["Plan"]["Parameters"] == {"input.$": "$", "execution.$": "$$.Execution.Id"}
    assert states["Commit"]["Parameters"]["execution.$"] == "$$.Execution.Id"
    # Every Catch after Plan that ends the execution failed goes through Release first.
    release = states["Release"]
    assert release["Resource"].endswith(f":function:{commit}") and release["Next"] == "Explain"
    assert release["Parameters"] == {"action": "release", "run.$": "$.run", "execution.$": "$$.Execution.Id"}
    assert release["ResultPath"] is None  # $.error, the run's error, is what the execution fails with
    assert release["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.release_error", "Next": "Explain"}]
    catches = {name: [c["Next"] for c in st.get("Catch", [])] for name, st in states.items() if name not in ("Plan", "Release")}
    assert catches["Progress"] == ["Release"] and catches["Commit"] == ["Release"]
    assert {n for nexts in catches.values() for n in nexts} == {"Release"}
    into_explain = {n for n, st in states.items() if st.get("Next") == "Explain" or any(c["Next"] == "Explain" for c in st.get("Catch", []))}
    assert into_explain == {"Plan", "Release"}
    # An execution cannot outlive the timeout its lock expires with.
    env = fn(synth, "Planner")["Properties"]["Environment"]["Variables"]
    assert d["TimeoutSeconds"] == 7 * 24 * 3600 == int(env["CUBELESS_RUN_TIMEOUT"])
    assert fn(synth, "Commit")["Properties"]["Environment"]["Variables"]["CUBELESS_RUN_TIMEOUT"] == env["CUBELESS_RUN_TIMEOUT"]


def test_planner_and_commit_may_ask_whether_an_execution_of_this_state_machine_runs(synth: Synth) -> None:
    t = synth.templates[STACK]
    (sm,) = synth.resources(STACK, "AWS::StepFunctions::StateMachine")
    found = [
        (res["Properties"], st)
        for res in t["Resources"].values()
        if res["Type"] == "AWS::IAM::Policy"
        for st in res["Properties"]["PolicyDocument"]["Statement"]
        if "states:DescribeExecution" in as_list(st["Action"])
    ]
    # (the Distributed Map's own policy describes its child executions, under the state machine's role)
    lock = [(props, st) for props, st in found if any(r["Ref"].startswith(("FunctionsPlannerRole", "FunctionsCommitRole")) for r in props["Roles"])]
    ((props, st),) = lock
    assert as_list(st["Action"]) == ["states:DescribeExecution"]
    assert sorted(r["Ref"].split("Role")[0] for r in props["Roles"]) == ["FunctionsCommit", "FunctionsPlanner"]
    assert st["Resource"]["Fn::Join"][1][-2] == {"Fn::GetAtt": [sm, "Name"]}  # this state machine's executions only
    assert render(st["Resource"], t) == f"arn:aws:states:us-east-1:123456789012:execution:{sm.lower()}-name:*"


def test_definition_passes_asl_validator(synth: Synth, tmp_path: Path) -> None:
    validator = ROOT / "node_modules/.bin/asl-validator"
    if not validator.exists():
        pytest.skip("node_modules missing: run `make setup`")
    paths = []
    for stack in (STACK, VARIANT):
        p = tmp_path / f"{stack}.asl.json"
        d = definition(synth.templates[stack])
        if stack == VARIANT:  # asl-validator's schema wants an integer; AWS takes 12.5
            d["States"]["Workers"]["ToleratedFailurePercentage"] = 12
        p.write_text(json.dumps(d))
        paths += ["--json-path", str(p)]
    out = subprocess.run([str(validator), *paths], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# -- schedules, monitoring, outputs -----------------------------------------------------------------


def test_schedules_start_the_state_machine_and_the_example_is_disabled(synth: Synth) -> None:
    t = synth.templates[STACK]
    (schedule,) = synth.resources(STACK, "AWS::Scheduler::Schedule").values()
    props = schedule["Properties"]
    assert props["State"] == "DISABLED" and props["ScheduleExpression"] == "cron(0 6 3 * ? *)"
    target = render(props["Target"], t)
    assert target["Arn"].endswith(":stateMachine:" + next(iter(synth.resources(STACK, "AWS::StepFunctions::StateMachine"))))
    payload = json.loads(target["Input"])
    bucket = next(iter(synth.resources(STACK, "AWS::S3::Bucket"))).lower()
    assert payload["spec"]["store"] == f"s3://{bucket}/cubes/example.zarr"
    assert payload["as_of"] == "<aws.scheduler.scheduled-time>"
    from cubeless.aws import parse_request

    assert parse_request({**payload, "as_of": "2025-03-03T06:00:00Z"}).spec.end.isoformat() == "2025-02-28"
    role = render(props["Target"]["RoleArn"], t)
    assert role
    (variant,) = synth.resources(VARIANT, "AWS::Scheduler::Schedule").values()
    vpayload = json.loads(render(variant["Properties"]["Target"]["Input"], synth.templates[VARIANT]))
    assert variant["Properties"]["State"] == "ENABLED" and vpayload["lanes"] == 2 and "as_of" not in vpayload
    assert vpayload["spec"]["store"] == "s3://existing-cubes/wk.zarr"


def test_dashboard_and_alarms(synth: Synth) -> None:
    t = synth.templates[STACK]
    (dash,) = synth.resources(STACK, "AWS::CloudWatch::Dashboard").values()
    body = render(dash["Properties"]["DashboardBody"], t)
    for needle in ('"cubeless","TasksDone"', '"cubeless","TasksFailed"', '"cubeless","WorkerCalls"', '"cubeless","TasksDeadLettered"', '"cubeless","RunRounds"', '"stat":"p50"', '"stat":"p95"', "ConcurrentExecutions", "ApproximateNumberOfMessagesVisible"):
        assert needle in body, needle
    alarms = synth.resources(STACK, "AWS::CloudWatch::Alarm").values()
    dlq = next(a["Properties"] for a in alarms if a["Properties"].get("MetricName") == "ApproximateNumberOfMessagesVisible")
    assert dlq["Threshold"] == 0 and dlq["ComparisonOperator"] == "GreaterThanThreshold"
    queue_id = dlq["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
    assert "DeadLetter" in queue_id
    runs = next(a["Properties"] for a in alarms if "Metrics" in a["Properties"])
    names = {m["MetricStat"]["Metric"]["MetricName"] for m in runs["Metrics"] if "MetricStat" in m}
    assert names == {"ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"}
    assert runs["Threshold"] == 0 and runs["ComparisonOperator"] == "GreaterThanThreshold"
    assert all("AlarmActions" not in a["Properties"] for a in alarms)
    for alarm in synth.resources(VARIANT, "AWS::CloudWatch::Alarm").values():
        assert alarm["Properties"]["AlarmActions"] == ["arn:aws:sns:us-east-1:123456789012:alerts"]


def test_outputs_are_what_cubeless_aws_reads(synth: Synth) -> None:
    outputs = synth.templates[STACK]["Outputs"]
    assert {"StateMachineArn", "BucketName", "QueueUrl", "DeadLetterQueueUrl", "DashboardName", "TilesUrl", "TilesFunctionArn"} <= set(outputs)
    from cubeless.aws import TILES_FUNCTION_OUTPUT, TILES_URL_OUTPUT

    assert {TILES_URL_OUTPUT, TILES_FUNCTION_OUTPUT} <= set(outputs)


# -- policy as code ----------------------------------------------------------------------------------


def test_cdk_nag_finds_nothing_unacknowledged(synth: Synth) -> None:
    assert synth.error is None, f"cdk-nag (AwsSolutions) findings:\n{synth.error}"
    report = synth.outdir / "validation-report.json"
    if report.exists():
        assert all(not r.get("violations") for r in json.loads(report.read_text()).get("pluginReports", []))


def test_every_acknowledgement_has_a_reason(synth: Synth) -> None:
    suppressed = {}
    for logical, res in synth.templates[STACK]["Resources"].items():
        for rule in res.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            suppressed.setdefault(rule["id"], []).append((logical, rule["reason"]))
    assert {"AwsSolutions-S1", "AwsSolutions-L1", "AwsSolutions-IAM5[Resource::*]"} <= set(suppressed)
    for rule, where in suppressed.items():
        assert rule.startswith("AwsSolutions-")
        assert all(len(reason) > 30 for _, reason in where), (rule, where)
    # Wildcard resources are acknowledged one by one: the bucket's objects, each function's
    # versions, the Map's child executions, and "*" (on the actions test_iam_is_scoped allows).
    for rule in (r for r in suppressed if r.startswith("AwsSolutions-IAM5")):
        resource = rule.removeprefix("AwsSolutions-IAM5[Resource::").removesuffix("]")
        assert (
            resource == "*"
            or (resource.startswith("<StorageBucket") and resource.endswith(".Arn>/*"))
            or (resource.startswith("<Functions") and resource.endswith(".Arn>:*"))
            or ":execution:" in resource
        ), rule


@pytest.mark.parametrize("stack", [STACK, VARIANT])
def test_cfn_lint_finds_no_errors(synth: Synth, stack: str) -> None:
    from cfnlint.api import lint_file

    matches = lint_file(synth.outdir / f"{stack}.template.json")
    # W3005: CDK adds DependsOn on a role a GetAtt already depends on (harmless, CDK's own output).
    problems = [f"{m.rule.id} {m.message} ({m.path})" for m in matches if m.rule.id != "W3005"]
    assert problems == []
    assert all(m.rule.severity.lower() != "error" for m in matches)
