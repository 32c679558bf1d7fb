"""Drives a Home Assistant Core through its own HTTP API, as its frontend does (stdlib only).

  driver.py ready BASE SECONDS                -> waits until its HTTP API answers
  driver.py onboard BASE                      -> prints an access token (owner created)
  driver.py mqtt BASE TOKEN HOST PORT USER PW -> adds the MQTT integration via its config flow
  driver.py states BASE TOKEN                 -> prints /api/states (JSON)
  driver.py call BASE TOKEN DOMAIN SERVICE JSON -> calls a service, prints the answer
"""
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def request(method, url, body=None, token=None, form=False):
    headers = {}
    data = None
    if token:
        headers["Authorization"] = "Bearer " + token
    if body is not None:
        if form:
            data = urllib.parse.urlencode(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {url}: HTTP {e.code}: {e.read().decode()[:500]}")
    return json.loads(text) if text else None


def onboard(base):
    client_id = base + "/"
    user = request("POST", base + "/api/onboarding/users", {
        "client_id": client_id, "name": "Owner", "username": "owner",
        "password": "ha-test-password-not-default", "language": "en"})
    token = request("POST", base + "/auth/token", {
        "grant_type": "authorization_code", "code": user["auth_code"],
        "client_id": client_id}, form=True)["access_token"]
    request("POST", base + "/api/onboarding/analytics", {}, token)
    request("POST", base + "/api/onboarding/integration", {
        "client_id": client_id, "redirect_uri": base + "/?auth_callback=1"}, token)
    print(token)


def mqtt(base, token, host, port, user, password):
    flow = request("POST", base + "/api/config/config_entries/flow",
                   {"handler": "mqtt", "show_advanced_options": False}, token)
    if flow.get("type") == "form" and flow.get("step_id") == "user":
        flow = request("POST", base + "/api/config/config_entries/flow/" + flow["flow_id"],
                       {"next_step_id": "broker"}, token)
    result = request("POST", base + "/api/config/config_entries/flow/" + flow["flow_id"], {
        "broker": host, "port": int(port), "username": user, "password": password}, token)
    if result.get("type") != "create_entry":
        sys.exit("MQTT config flow did not create an entry: " + json.dumps(result))
    print(json.dumps(result.get("result", {})))


def ready(base, timeout):
    """Waits until HA's HTTP API answers (any HTTP status) or `timeout` seconds pass."""
    deadline = time.time() + float(timeout)
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(base + "/auth/providers", timeout=5):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    sys.exit("Home Assistant did not answer at " + base)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ready":
        ready(*args)
    elif cmd == "onboard":
        onboard(*args)
    elif cmd == "mqtt":
        mqtt(*args)
    elif cmd == "states":
        print(json.dumps(request("GET", args[0] + "/api/states", token=args[1])))
    elif cmd == "call":
        base, token, domain, service, body = args
        print(json.dumps(request("POST", f"{base}/api/services/{domain}/{service}",
                                 json.loads(body), token)))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
