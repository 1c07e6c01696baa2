//! The one MySQL packet the gate ever writes: an error in place of the
//! server's greeting.
//!
//! The server speaks first, so a client that has not been greeted yet is
//! waiting for a handshake packet; an ERR packet there is how a server
//! refuses a connection (`Too many connections`). Layout: a 3-byte
//! little-endian payload length, sequence id 0, then the payload `0xff`,
//! the error code (u16 little-endian), `#` and a 5-character SQLSTATE, and
//! the message. Without the `#` marker the mariadb client prints `(HY000)`.

/// `ER_CON_COUNT_ERROR`: the code a server sends when it is full, which
/// every client and connector already knows how to report and retry.
pub const ER_CON_COUNT_ERROR: u16 = 1040;
/// `CR_CONN_HOST_ERROR`: "Can't connect to MySQL server", what a client
/// reports itself when the server cannot be reached.
pub const CR_CONN_HOST_ERROR: u16 = 2003;

/// Messages are cut to this many bytes (clients print them whole).
const MAX_MESSAGE: usize = 512;

/// An ERR packet with sequence id 0: `code`, `#` + `sqlstate`, `message`.
///
/// `sqlstate` must be 5 ASCII characters (anything else is replaced by
/// `HY000`); the message is cut at a character boundary to 512 bytes.
pub fn error_packet(code: u16, sqlstate: &str, message: &str) -> Vec<u8> {
    let state = if sqlstate.len() == 5 && sqlstate.is_ascii() {
        sqlstate
    } else {
        "HY000"
    };
    let mut end = message.len().min(MAX_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message[..end];
    let len = 1 + 2 + 1 + 5 + message.len();
    let mut p = Vec::with_capacity(4 + len);
    p.extend_from_slice(&(len as u32).to_le_bytes()[..3]);
    p.push(0);
    p.push(0xff);
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    p.extend_from_slice(state.as_bytes());
    p.extend_from_slice(message.as_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packet_is_a_well_formed_err_with_sequence_zero() {
        let p = error_packet(1040, "08004", "dbslots: full");
        assert_eq!(&p[..4], &[22, 0, 0, 0]);
        assert_eq!(p[4], 0xff);
        assert_eq!(u16::from_le_bytes([p[5], p[6]]), 1040);
        assert_eq!(&p[7..13], b"#08004");
        assert_eq!(&p[13..], b"dbslots: full");
        assert_eq!(p.len() - 4, 22);
    }

    #[test]
    fn bad_states_and_long_messages_are_made_safe() {
        let p = error_packet(2003, "x", &"é".repeat(400));
        assert_eq!(&p[7..13], b"#HY000");
        let msg = &p[13..];
        assert!(msg.len() <= MAX_MESSAGE);
        assert!(std::str::from_utf8(msg).is_ok());
        let len = u32::from_le_bytes([p[0], p[1], p[2], 0]) as usize;
        assert_eq!(len, p.len() - 4);
    }
}
