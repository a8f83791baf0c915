"""TLS with a test CA (and client certificates) and a per-device ACL on a real Mosquitto."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as paho
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge.delivery import AlertsConfig, DeliveryService
from edge.mqtt import MqttConfig
from edge.outbox import Outbox
from tests.delivery_helpers import Acker, make_event
from tests.helpers import Mosquitto, wait_port


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> None:
    """ca.pem, server.pem/server.key, client.pem/client.key in `folder`."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("safeguard test CA", ca_key, None)
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(name, key, (ca.subject, ca_key), server=server)
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))


class SecureMosquitto(Mosquitto):
    """TLS only, client certificates required, passwords and a `%u` ACL."""

    def start(self) -> None:
        d = self.workdir
        if not (d / "ca.pem").exists():
            make_pki(d)
            users = d / "passwd"
            for i, (user, password) in enumerate(
                (("dev-a", "pw-a"), ("dev-b", "pw-b"), ("listener", "pw-l"))
            ):
                flags = ["-c"] if i == 0 else []
                subprocess.run(
                    ["mosquitto_passwd", *flags, "-b", str(users), user, password], check=True
                )
            (d / "acl").write_text(
                "user listener\ntopic readwrite safeguard/#\n\npattern readwrite safeguard/%u/#\n"
            )
        conf = d / "mosquitto.conf"
        conf.write_text(
            f"user root\nper_listener_settings false\nallow_anonymous false\n"
            f"password_file {d}/passwd\nacl_file {d}/acl\n"
            f"listener {self.port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\n"
            f"keyfile {d}/server.key\nrequire_certificate true\n"
            f"log_dest file {d}/mosquitto.log\n"
        )
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen([exe, "-c", str(conf)])

        wait_port(self.port)


def test_tls_acl_device_cannot_publish_as_another(tmp_path: Path) -> None:
    broker = SecureMosquitto(tmp_path / "broker")
    broker.workdir.mkdir()
    broker.start()
    d = broker.workdir
    tls = {
        "ca_certs": str(d / "ca.pem"),
        "certfile": str(d / "client.pem"),
        "keyfile": str(d / "client.key"),
    }
    acker = Acker(broker.port, username="listener", password="pw-l", **tls)
    outbox = Outbox(tmp_path / "o.db", "dev-a")
    config = MqttConfig.model_validate(
        {
            "port": broker.port,
            "username": "dev-a",
            "homeassistant": {"enabled": False},
            "tls": {
                "enabled": True,
                "ca": d / "ca.pem",
                "cert": d / "client.pem",
                "key": d / "client.key",
            },
        }
    )
    svc = DeliveryService(
        config, AlertsConfig(), outbox, "dev-a", environ={"SAFEGUARD_MQTT_PASSWORD": "pw-a"}
    )
    svc.start()
    try:
        outbox.submit(make_event(1))
        ids = {a["id"] for a in outbox.pending()}
        assert acker.wait_for(ids, 15) == set()  # over TLS, with the device's own topics

        # dev-a publishing under dev-b's topics: MQTT 5 reports "Not authorized"
        results: dict[str, int] = {}
        done = threading.Event()
        intruder = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="intruder", protocol=MQTTProtocolVersion.MQTTv5
        )
        intruder.username_pw_set("dev-a", "pw-a")
        intruder.tls_set(tls["ca_certs"], tls["certfile"], tls["keyfile"])
        topics: dict[int, str] = {}

        def on_publish(
            client: object, userdata: object, mid: int, reason: object, props: object
        ) -> None:
            results[topics[mid]] = reason.value  # type: ignore[attr-defined]
            if len(results) == 2:
                done.set()

        intruder.on_publish = on_publish
        intruder.connect("127.0.0.1", broker.port)
        intruder.loop_start()
        for topic in ("safeguard/dev-b/alert", "safeguard/dev-a/health"):
            info = intruder.publish(topic, "{}", qos=1)
            topics[info.mid] = topic
        assert done.wait(10)
        intruder.disconnect()
        intruder.loop_stop()
        assert results["safeguard/dev-b/alert"] == 135  # Not authorized
        assert results["safeguard/dev-a/health"] in (0, 16)  # Success / no subscribers

        # a wrong password is refused: no connection
        bad = DeliveryService(
            config.model_copy(update={"client_id": "bad"}),
            AlertsConfig(),
            outbox,
            "dev-a",
            environ={"SAFEGUARD_MQTT_PASSWORD": "wrong"},
        )
        bad.start()
        assert not bad.link.wait_connected(2)
        bad.stop(3)
    finally:
        svc.stop(5)
        acker.close()
        broker.stop()
