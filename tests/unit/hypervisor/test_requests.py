import pytest

from cloud_api_adaptor.errors import InvalidInput
from cloud_api_adaptor.hypervisor import requests as rq


def annotations(**overrides: str) -> dict[str, str]:
    base = {key: "" for key in rq.KATA_ANNOTATIONS}
    base.update({rq.ANN_SANDBOX_NAME: "nginx", rq.ANN_SANDBOX_NAMESPACE: "default"})
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return base


@pytest.mark.parametrize("sid", ["", ".", "..", "a/b", "a b", "x" * 129, "é"])
def test_bad_sandbox_ids_are_refused(sid: str) -> None:
    with pytest.raises(InvalidInput) as err:
        rq.validate_sandbox_id(sid)
    assert err.value.field == "id"


def test_good_sandbox_ids_pass() -> None:
    for sid in ["a", "A.b-c_d", "f" * 64, "x" * 128]:
        assert rq.validate_sandbox_id(sid) == sid


def test_agent_socket_path_must_fit_a_unix_socket() -> None:
    assert rq.agent_socket_path("/run/peerpod/pods", "abc") == "/run/peerpod/pods/abc/agent.ttrpc"
    with pytest.raises(InvalidInput, match="longer than 107 bytes"):
        rq.agent_socket_path("/run/peerpod/pods", "x" * 100)


def test_empty_annotations_of_kata_mean_zero() -> None:
    pod = rq.parse_annotations(annotations())
    assert (pod.pod_name, pod.pod_namespace, pod.vcpus, pod.memory_mib, pod.gpus) == (
        "nginx",
        "default",
        0,
        0,
        0,
    )


def test_crio_sandbox_names_are_parsed() -> None:
    pod = rq.parse_annotations({rq.ANN_SANDBOX_NAME: "k8s_web_ns_uid_0", rq.ANN_SANDBOX_NAMESPACE: "ns"})
    assert pod.pod_name == "web"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (rq.ANN_SANDBOX_NAME, "pod name io.kubernetes.cri.sandbox-name is missing in annotations"),
        (
            rq.ANN_SANDBOX_NAMESPACE,
            "namespace name io.kubernetes.cri.sandbox-namespace is missing in annotations",
        ),
    ],
)
def test_missing_pod_identity_uses_the_go_texts(key: str, message: str) -> None:
    ann = annotations()
    ann[key] = ""
    with pytest.raises(InvalidInput) as err:
        rq.parse_annotations(ann)
    assert str(err.value) == message
    assert err.value.field == key


@pytest.mark.parametrize("key", [rq.ANN_VCPUS, rq.ANN_MEMORY, rq.ANN_GPUS])
@pytest.mark.parametrize("value", ["-1", "two", "1.5", "99999999999"])
def test_bad_numbers_are_refused_naming_the_annotation(key: str, value: str) -> None:
    ann = annotations()
    ann[key] = value
    with pytest.raises(InvalidInput) as err:
        rq.parse_annotations(ann)
    assert err.value.field == key
    assert key in str(err.value)


def test_instance_names_follow_the_go_scheme() -> None:
    assert rq.instance_name("My_Pod", "ABCDEF1234567890") == "podvm-my-pod-abcdef12"
    long = rq.instance_name("p" * 100, "0123456789", 63)
    assert len(long) == 63 and long.endswith("-01234567")
