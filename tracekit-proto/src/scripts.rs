//! The Lua scripts, each prefixed with the key prelude generated from
//! `keys.rs` and with `common.lua` (Redis has no script includes). Loaded
//! once; `redis::Script` sends EVALSHA and reloads the script on NOSCRIPT
//! (e.g. after a Redis restart).

use std::sync::LazyLock;

use redis::Script;

const COMMON: &str = include_str!("scripts/common.lua");

/// A script's whole text: the key prelude, the limits, `common` and `body`.
pub(crate) fn source(common: &str, body: &str) -> String {
    format!(
        "{}local MAX_TASK_BYTES = {}\nlocal QUOTE_BYTES = {}\n{common}\n{body}",
        crate::keys::lua_prelude(),
        crate::task::MAX_TASK_BYTES,
        crate::task::QUOTE_BYTES,
    )
}

fn with_common(body: &str) -> Script {
    Script::new(&source(COMMON, body))
}

macro_rules! scripts {
    ($($name:ident => $file:literal,)*) => {
        $(
            pub(crate) static $name: LazyLock<Script> =
                LazyLock::new(|| with_common(include_str!(concat!("scripts/", $file))));
        )*
        /// Every script's own source (for the key-name check in `keys.rs`).
        #[cfg(test)]
        pub(crate) const SOURCES: &[(&str, &str)] = &[
            ("common.lua", COMMON),
            $(($file, include_str!(concat!("scripts/", $file))),)*
        ];
    };
}

scripts! {
    PLACE => "place.lua",
    RECOVER => "recover.lua",
    REGISTER => "register.lua",
    HEARTBEAT => "heartbeat.lua",
    TAKE => "take.lua",
    COMPLETE => "complete.lua",
    DEAD_LETTER => "dead_letter.lua",
    REQUEUE => "requeue.lua",
    DEREGISTER => "deregister.lua",
    LEAVE => "leave.lua",
    HOLDER => "holder.lua",
    SUBMIT => "submit.lua",
    STATS => "stats.lua",
    DEAD_LIST => "dead_list.lua",
    DEAD_REQUEUE => "dead_requeue.lua",
    DEAD_CLEAR => "dead_clear.lua",
    RUN_START => "run_start.lua",
    RUN_STOP => "run_stop.lua",
    RUN_SETTLE => "run_settle.lua",
}

/// Test support: sets a node's counters and re-files it in the placement
/// index; checks the index against the counters.
#[cfg(any(test, feature = "testing"))]
pub(crate) static STAGE: LazyLock<Script> =
    LazyLock::new(|| with_common(include_str!("scripts/testing_stage.lua")));
#[cfg(any(test, feature = "testing"))]
pub(crate) static WATCHED: LazyLock<Script> =
    LazyLock::new(|| with_common(include_str!("scripts/testing_watched.lua")));
#[cfg(any(test, feature = "testing"))]
pub(crate) static CHECK_INDEX: LazyLock<Script> =
    LazyLock::new(|| with_common(include_str!("scripts/testing_check_index.lua")));
