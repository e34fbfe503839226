//! The README's first command: `strait-proxy demo` starts a local mesh (control plane, proxy over ADS,
//! upstreams) that answers the commands it prints, and shifts the canary when the mesh file is edited,
//! without a failed request.

#[path = "../support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

#[tokio::test]
async fn demo_serves_a_local_mesh_and_follows_an_edit() {
    let child = Command::new(BIN).arg("demo").stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut demo = KillOnDrop(child);
    wait_ready("strait-proxy demo", &mut demo.0, ([127, 0, 0, 1], 15000).into(), Duration::from_secs(20)).await;
    let client = http1_client();

    assert_eq!(get(&client, "http://127.0.0.1:10000/healthz", &[]).await.status, 200);
    assert_eq!(get(&client, "http://127.0.0.1:10000/old/page", &[]).await.status, 302);
    assert_eq!(get(&client, "http://127.0.0.1:10000/", &[("x-canary", "true")]).await.service(), "web-v2");
    let api = get(&client, "http://127.0.0.1:10000/api/users", &[]).await;
    assert_eq!((api.service().as_str(), api.json()["path"].as_str()), ("api", Some("/users")));

    // The printed canary command: 90/10 becomes 50/50, every request answered meanwhile.
    let mesh = std::env::temp_dir().join("strait-demo").join("mesh.yaml");
    let text = std::fs::read_to_string(&mesh).unwrap();
    std::fs::write(&mesh, text.replace("weight: 90", "weight: 50").replace("weight: 10", "weight: 50")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut v2 = 0;
        for _ in 0..200 {
            let reply = get(&client, "http://127.0.0.1:10000/", &[]).await;
            assert_eq!(reply.status, 200, "{reply:?}");
            v2 += usize::from(reply.service() == "web-v2");
        }
        if (70..=130).contains(&v2) {
            break;
        }
        assert!(Instant::now() < deadline, "web-v2 still gets {v2} of 200 after the edit");
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
