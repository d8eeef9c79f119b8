//! The Lua scripts, each prefixed with `common.lua` (Redis has no script
//! includes). Loaded once; `redis::Script` sends EVALSHA and reloads the
//! script on NOSCRIPT (e.g. after a Redis restart).

use std::sync::LazyLock;

use redis::Script;

const COMMON: &str = include_str!("scripts/common.lua");

fn with_common(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub(crate) static $name: LazyLock<Script> =
            LazyLock::new(|| with_common(include_str!(concat!("scripts/", $file))));
    };
}

script!(PLACE, "place.lua");
script!(RECOVER, "recover.lua");
script!(REGISTER, "register.lua");
script!(HEARTBEAT, "heartbeat.lua");
script!(TAKE, "take.lua");
script!(COMPLETE, "complete.lua");
script!(DEAD_LETTER, "dead_letter.lua");
script!(REQUEUE, "requeue.lua");
script!(DEREGISTER, "deregister.lua");
script!(SUBMIT, "submit.lua");
