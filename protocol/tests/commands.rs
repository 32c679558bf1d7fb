//! Commands to actuators in the two-party harness: a command queued at the hub rides, encrypted,
//! in the acknowledgement of the sensor's next reading (queue mode), over a lossy network, and
//! is delivered exactly once; a newer command replaces one not yet sent.

mod harness;

use harness::{lossy, paired};
use protocol::link::SensorEvent;
use protocol::link::command::Command;
use protocol::time::Millis;
use protocol::vocabulary::Command::Setpoint;

fn commands(h: &harness::Harness, i: usize) -> Vec<Command> {
    h.sensors[i]
        .firmware
        .iter()
        .filter_map(|e| match e {
            SensorEvent::Command(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_queued_command_rides_the_next_acknowledgement_once() {
    let mut h = paired(71, lossy(), 2);
    let kid = *h.hub.contexts.keys().next().expect("a sensor");
    let i = (0..h.sensors.len())
        .find(|&i| h.sensors[i].flash.params.as_ref().map(|p| p.sender_id) == Some(kid))
        .expect("its sensor");
    let old = Command { id: 1, setting: Setpoint, value: 19.0 };
    let new = Command { id: 2, setting: Setpoint, value: 22.5 };
    assert!(h.hub.link.queue_command(&kid, old));
    assert!(h.hub.link.queue_command(&kid, new.clone()), "the newer one replaces it");
    assert_eq!(h.hub.link.pending_command(&kid), Some(&new));
    for id in 0..5 {
        h.queue_reading(i, 1_000 + id);
        let done = h.run_until(Millis(h.now.0 + 120_000), |h| h.sensors[i].link.queued() == 0);
        assert!(done, "reading {id} delivered");
    }
    assert_eq!(commands(&h, i), vec![new], "delivered exactly once, the newest");
    assert_eq!(h.hub.link.pending_command(&kid), None);
    let other = 1 - i;
    assert!(commands(&h, other).is_empty(), "only its own sensor gets it");
    assert!(!h.hub.link.queue_command(
        &protocol::oscore::Kid::default(),
        Command { id: 3, setting: Setpoint, value: 1.0 }
    ));
}
