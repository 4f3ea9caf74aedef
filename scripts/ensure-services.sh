#!/usr/bin/env bash
# Start RabbitMQ and Mosquitto when none answers on their standard ports (CI on a fresh machine).
set -euo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
  for _ in $(seq 1 60); do answers "$1" && return 0; sleep 1; done
  echo "ensure-services: nothing answers on port $1" >&2
  return 1
}

install() {
  command -v apt-get >/dev/null || { echo "ensure-services: install $1 by hand" >&2; exit 1; }
  [ -n "${_apt_updated:-}" ] || { apt-get update -qq; _apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

if ! answers 5672; then
  command -v rabbitmq-server >/dev/null || install rabbitmq-server
  rabbitmq-server -detached
  wait_for 5672
fi
if ! answers 1883; then
  command -v mosquitto >/dev/null || install mosquitto
  if [ -f /etc/mosquitto/mosquitto.conf ]; then mosquitto -d -c /etc/mosquitto/mosquitto.conf
  else mosquitto -d; fi
  wait_for 1883
fi
# The tests start their own Prometheus (and check the alert rules with promtool).
command -v prometheus >/dev/null && command -v promtool >/dev/null || install prometheus
echo "ensure-services: RabbitMQ on 5672 and Mosquitto on 1883 answer; Prometheus is installed"
