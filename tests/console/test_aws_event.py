"""The console's Lambda entry point answering API Gateway (REST, proxy) events as AWS sends them: a stage prefix in
the path, the IAM caller in requestContext.identity (AWS_IAM authorisation), a JSON body."""

from __future__ import annotations

import json
from typing import Any

from benchmarks.console_seed import Seeded
from services.console.app import bind, handler

CALLER = "arn:aws:sts::123456789012:assumed-role/Operators/erin"


def aws_event(method: str, resource: str, path: str, params: dict[str, str] | None = None,
              body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "resource": resource, "path": path, "httpMethod": method,
        "headers": {"Host": "abc123.execute-api.eu-west-1.amazonaws.com", "Accept": "application/json",
                    **(headers or {})},
        "multiValueHeaders": {}, "queryStringParameters": None, "multiValueQueryStringParameters": None,
        "pathParameters": params, "stageVariables": None,
        "requestContext": {
            "resourcePath": resource, "httpMethod": method, "path": f"/Prod{path}", "stage": "Prod",
            "accountId": "123456789012", "apiId": "abc123", "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "identity": {"userArn": CALLER, "user": "AROAEXAMPLE:erin", "caller": "AROAEXAMPLE:erin",
                         "accountId": "123456789012", "sourceIp": "203.0.113.9", "accessKey": "ASIAEXAMPLE"}},
        "body": json.dumps(body) if body is not None else None, "isBase64Encoded": False}


def test_the_handler_answers_proxy_events_and_records_the_iam_caller(seeded: Seeded) -> None:
    bind(seeded.stack.operator_deps())
    listing = handler(aws_event("GET", "/api/models", "/api/models"), None)
    assert listing["statusCode"] == 200 and json.loads(listing["body"])["total"] == 4
    host = "abc123.execute-api.eu-west-1.amazonaws.com"
    approve = aws_event("POST", "/api/models/{version}/approve", f"/api/models/{seeded.pending}/approve",
                        {"version": str(seeded.pending)}, {"reason": "signed off"},
                        {"Content-Type": "application/json", "X-Nacelle-Console": "1", "Origin": f"https://{host}"})
    reply = handler(approve, None)
    assert reply["statusCode"] == 200, reply["body"]
    history = seeded.stack.registry.history(seeded.stack.settings.group, seeded.pending)
    assert (history[-1]["status"], history[-1]["actor"], history[-1]["reason"]) == ("Approved", CALLER, "signed off")
    page = handler(aws_event("GET", "/fleet", "/fleet"), None)
    assert page["statusCode"] == 200 and 'src="/Prod/static/console.js"' in page["body"]  # links keep the stage
    missing = handler(aws_event("GET", "/api/alerts/{alert_id}", "/api/alerts/nope", {"alert_id": "nope"}), None)
    assert missing["statusCode"] == 404 and json.loads(missing["body"])["error"]["code"] == "not_found"
