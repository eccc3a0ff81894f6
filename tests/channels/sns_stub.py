"""A local Amazon SNS endpoint for tests: it speaks the Query protocol botocore uses for SNS
(form-encoded POST, XML answers) and keeps every Publish it accepted, attributes included,
which moto's server does not record for SMS.

``SnsStub()`` starts on 127.0.0.1 on a free port; ``.url`` is the endpoint, ``.published`` the
requests (dicts: PhoneNumber, Message, attributes {name: value}, TargetArn, MessageStructure...),
``.delay`` seconds each Publish waits before answering, ``.fail`` {phone or arn: AWS error code}.
"""

from __future__ import annotations

import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

SENDER_FAULT = {"InvalidParameter", "EndpointDisabled", "InvalidParameterValue", "OptedOut"}


class SnsStub:
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.delay = 0.0
        self.fail: dict[str, str] = {}
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                form = {
                    k: v[0]
                    for k, v in parse_qs(self.rfile.read(length).decode(), keep_blank_values=True).items()
                }
                status, body = stub._answer(form)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _answer(self, form: dict[str, str]) -> tuple[int, str]:
        action = form.get("Action")
        if action != "Publish":
            return 400, _error("InvalidAction", f"not emulated: {action}", "Sender")
        if self.delay:
            time.sleep(self.delay)
        attributes = {}
        i = 1
        while f"MessageAttributes.entry.{i}.Name" in form:
            attributes[form[f"MessageAttributes.entry.{i}.Name"]] = form.get(
                f"MessageAttributes.entry.{i}.Value.StringValue"
            )
            i += 1
        request = {k: v for k, v in form.items() if not k.startswith("MessageAttributes.")}
        request["attributes"] = attributes
        target = form.get("PhoneNumber") or form.get("TargetArn") or ""
        code = self.fail.get(target)
        if code:
            fault = "Sender" if code in SENDER_FAULT else "Receiver"
            return (400 if fault == "Sender" else 500), _error(code, f"stubbed {code}", fault)
        message_id = str(uuid.uuid4())
        request["MessageId"] = message_id
        with self._lock:
            self.published.append(request)
        return 200, (
            '<PublishResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><PublishResult>'
            f"<MessageId>{message_id}</MessageId></PublishResult>"
            "<ResponseMetadata><RequestId>stub</RequestId></ResponseMetadata></PublishResponse>"
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _error(code: str, message: str, fault: str) -> str:
    return (
        '<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><Error>'
        f"<Type>{fault}</Type><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
        "<RequestId>stub</RequestId></ErrorResponse>"
    )
