//! Arbitrary bytes as a plan received from the golden node. `Plan::parse`
//! never panics; a plan it accepts serialises back to JSON that parses to an
//! equal plan, and every query a node makes of it (descs, mount order, the
//! filesystem holding a path, the raw image of a filesystem) stays total.

#![no_main]

use kacast::disk::Plan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(plan) = Plan::parse(data) else {
        return;
    };
    let json = plan.to_json();
    match Plan::parse(json.as_bytes()) {
        Ok(again) => assert_eq!(again, plan, "{json}"),
        Err(e) => panic!("an accepted plan wrote back as JSON it refuses: {e}\n{json}"),
    }
    let descs = plan.descs().expect("check() parsed every desc");
    assert_eq!(descs.len(), plan.disks.len());
    let order = plan.mount_order();
    assert!(order.iter().all(|f| !f.is_swap() && plan.raw_of(f).is_none()));
    if let Some(first) = order.first() {
        assert_eq!(first.mount_point.as_deref(), Some("/"), "a parent mounted after its child: {order:?}");
    }
    for fs in &plan.filesystems {
        if let Some(m) = &fs.mount_point {
            let _ = plan.filesystem_of(&format!("{m}/x"));
        }
    }
    let _ = plan.raw_mounts();
});
