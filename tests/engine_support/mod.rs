//! A virtual-clock harness for engine tests: no sockets, no sleeps.
#![allow(dead_code)]

pub use conntrackd::conntrack::Role;
use conntrackd::engine::{Context, Decision};
use conntrackd::policy::Policy;
use conntrackd::wire::build;
use conntrackd::{Engine, EngineSettings, Timestamp};
use std::net::SocketAddr;
use std::ops::Deref;

pub use conntrackd::wire::TcpFlags as F;
pub const SYN: u8 = F::SYN;
pub const ACK: u8 = F::ACK;
pub const FIN: u8 = F::FIN;
pub const RST: u8 = F::RST;
pub const PSH: u8 = F::PSH;
pub const URG: u8 = F::URG;

/// A drop-by-default policy whose one rule, `web` (TCP to port 80), puts
/// its connections behind the SYN proxy (the replay tests read it too).
pub const PROXIED_WEB: &str = include_str!("proxied-web.toml");

/// A decision a test may ignore (setup steps); later assertions catch a bad setup.
#[derive(Clone, Copy, Debug)]
pub struct Out(pub Decision);

impl Deref for Out {
    type Target = Decision;
    fn deref(&self) -> &Decision {
        &self.0
    }
}

pub struct Harness {
    pub engine: Engine,
    pub now_secs: u64,
    pub ctx: Context<'static>,
}

impl Harness {
    pub fn allow_all() -> Harness {
        Harness::with(EngineSettings::default(), Policy::allow_all())
    }

    pub fn with(settings: EngineSettings, policy: Policy) -> Harness {
        Harness {
            engine: Engine::new(settings, policy),
            now_secs: 1_000,
            ctx: Context::default(),
        }
    }

    pub fn from_toml(text: &str) -> Harness {
        let config = conntrackd::Config::parse(text, std::path::Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        Harness::with(config.engine, config.policy)
    }

    pub fn now(&self) -> Timestamp {
        Timestamp::from_secs(self.now_secs)
    }

    pub fn send(&mut self, bytes: Vec<u8>) -> Out {
        Out(self.engine.decide(&bytes, &self.ctx, self.now()))
    }

    pub fn tcp(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        flags: u8,
        seq: u32,
        ack: u32,
        payload: &[u8],
    ) -> Out {
        let bytes = build::tcp(from, to)
            .flags(flags)
            .seq(seq)
            .ack(ack)
            .payload(payload)
            .build();
        self.send(bytes)
    }
}

/// `before -> after` of a decision.
pub fn show(d: &Decision) -> String {
    format!("{} -> {}", d.before, d.after)
}

/// A TCP connection seen from the gateway: both sides' next sequence numbers.
/// ISNs sit just below 2^32 so the connection crosses the wrap.
pub struct Flow {
    pub c: SocketAddr,
    pub s: SocketAddr,
    pub c_nxt: u32,
    pub s_nxt: u32,
}

impl Flow {
    pub fn v4() -> Flow {
        Flow::v4_port(40000)
    }

    pub fn v4_port(port: u16) -> Flow {
        Flow {
            c: format!("198.18.0.2:{port}").parse().unwrap(),
            s: "198.19.0.2:80".parse().unwrap(),
            c_nxt: u32::MAX - 50_000,
            s_nxt: u32::MAX - 3_000,
        }
    }

    pub fn v6() -> Flow {
        Flow {
            c: "[2001:db8:1::2]:40000".parse().unwrap(),
            s: "[2001:db8:2::2]:443".parse().unwrap(),
            c_nxt: u32::MAX - 10,
            s_nxt: 7,
        }
    }

    /// An IPv4 connection through its three-way handshake.
    pub fn established(t: &mut Harness) -> Flow {
        Flow::v4().open(t)
    }

    /// This flow through its three-way handshake.
    pub fn open(mut self, t: &mut Harness) -> Flow {
        for (sender, flags) in [
            (Role::Originator, 0x02),
            (Role::Responder, 0x12),
            (Role::Originator, 0x10),
        ] {
            let d = self.send(t, sender, flags, b"");
            assert_eq!(
                d.reason.verdict(),
                conntrackd::Verdict::Accept,
                "handshake step {flags:#x}: {:?}",
                d.reason
            );
        }
        self
    }

    pub fn syn_builder(&self) -> build::Tcp {
        build::tcp(self.c, self.s).flags(SYN).seq(self.c_nxt)
    }

    /// The SYN+ACK answering `syn_builder` (call after sending the SYN).
    pub fn synack_builder(&mut self) -> build::Tcp {
        let b = build::tcp(self.s, self.c)
            .flags(SYN | ACK)
            .seq(self.s_nxt)
            .ack(self.c_nxt.wrapping_add(1));
        self.c_nxt = self.c_nxt.wrapping_add(1);
        self.s_nxt = self.s_nxt.wrapping_add(1);
        b
    }

    /// A segment from one side with its next seq and the other side's next
    /// seq as ack (options and window to add), without advancing either.
    pub fn builder(&self, sender: Role, flags: u8) -> build::Tcp {
        let (from, to, seq, ack) = match sender {
            Role::Originator => (self.c, self.s, self.c_nxt, self.s_nxt),
            Role::Responder => (self.s, self.c, self.s_nxt, self.c_nxt),
        };
        build::tcp(from, to).flags(flags).seq(seq).ack(ack)
    }

    /// Sends from one side with its next seq and the other side's next seq as ack,
    /// then advances the sender by the sequence space the segment used.
    pub fn send(&mut self, t: &mut Harness, sender: Role, flags: u8, payload: &[u8]) -> Out {
        let (from, to, seq, ack) = match sender {
            Role::Originator => (self.c, self.s, self.c_nxt, self.s_nxt),
            Role::Responder => (self.s, self.c, self.s_nxt, self.c_nxt),
        };
        let d = t.tcp(from, to, flags, seq, ack, payload);
        let used = payload.len() as u32 + (flags & SYN != 0) as u32 + (flags & FIN != 0) as u32;
        match sender {
            Role::Originator => self.c_nxt = self.c_nxt.wrapping_add(used),
            Role::Responder => self.s_nxt = self.s_nxt.wrapping_add(used),
        }
        d
    }

    pub fn client(&mut self, t: &mut Harness, flags: u8, payload: &[u8]) -> Out {
        self.send(t, Role::Originator, flags, payload)
    }

    pub fn server(&mut self, t: &mut Harness, flags: u8, payload: &[u8]) -> Out {
        self.send(t, Role::Responder, flags, payload)
    }

    /// Sends each step with the sides' next sequence numbers and checks that
    /// it is tracked with the expected `before -> after` transition.
    pub fn assert_steps(&mut self, t: &mut Harness, steps: &[(Role, u8, &str)]) {
        for (sender, flags, expected) in steps {
            let d = self.send(t, *sender, *flags, b"");
            assert_eq!(
                (d.reason, show(&d)),
                (conntrackd::Reason::Tracked, expected.to_string()),
                "{sender:?} {}",
                F(*flags)
            );
        }
    }
}

/// Collects what the table tells its observer: (event, cause, state).
#[derive(Default)]
pub struct Recorder(pub std::sync::Mutex<Vec<String>>);

impl conntrackd::conntrack::table::Observer for Recorder {
    fn active(&self) -> bool {
        true
    }
    fn observe(
        &self,
        change: conntrackd::conntrack::table::Change,
        key: &conntrackd::conntrack::FlowKey,
        conn: &conntrackd::conntrack::Conn,
    ) {
        use conntrackd::conntrack::table::Change;
        let port = key.endpoint(conn.originator).1;
        let what = match change {
            Change::New => "NEW".to_string(),
            Change::Update { before } => format!("UPDATE from {before}"),
            Change::Progress => "PROGRESS".to_string(),
            Change::Adopted => "ADOPTED".to_string(),
            Change::Destroy(why) => format!("DESTROY {}", why.name()),
        };
        self.0
            .lock()
            .unwrap()
            .push(format!("{port} {what} -> {}", conn.state()));
    }
}

pub fn recorder(t: &Harness) -> std::sync::Arc<Recorder> {
    let r = std::sync::Arc::new(Recorder::default());
    t.engine.table().set_observer(r.clone());
    r
}
