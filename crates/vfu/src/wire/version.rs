//! VERSION: the numbers, and the capabilities JSON (serde derive).

use super::codec::{Decode, Encode, Put, Reader, WireError};
use super::{DEFAULT_MAX_DATA_XFER_SIZE, DEFAULT_MAX_DMA_MAPS, DEFAULT_MAX_MSG_FDS};

/// VERSION payload: major, minor, and the optional JSON capabilities text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// The JSON text without its terminating NUL (empty when absent).
    pub json: String,
}

/// Capabilities negotiated by VERSION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Most fds one message may carry.
    pub max_msg_fds: u32,
    /// Largest `count` of a data transfer.
    pub max_data_xfer_size: u32,
    /// Most simultaneous DMA regions.
    pub max_dma_maps: u32,
    /// Supported DMA page sizes.
    pub pgsizes: u64,
    /// REGION_WRITE_MULTI allowed.
    pub write_multiple: bool,
    /// Twin-socket mode: server-to-client commands (DMA_READ/DMA_WRITE) on a socket of their
    /// own. In a request: the sender supports it; in a reply: it is set up, and `fd_index`
    /// names the reply's fd that is the client end.
    pub twin_socket: Option<u32>,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            max_msg_fds: DEFAULT_MAX_MSG_FDS,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            pgsizes: 4096,
            write_multiple: false,
            twin_socket: None,
        }
    }
}

impl<'a> Decode<'a> for Version {
    /// The numbers, then the JSON, which must be UTF-8 and NUL-terminated when present.
    fn decode(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let major = r.u16()?;
        let minor = r.u16()?;
        let rest = r.rest();
        let text = match rest.split_last() {
            None => "",
            Some((0, body)) => {
                std::str::from_utf8(body).map_err(|e| WireError::Json(e.to_string()))?
            }
            Some(_) => return Err(WireError::Json("version data is not NUL-terminated".into())),
        };
        Ok(Self {
            major,
            minor,
            json: text.trim_end_matches('\0').to_string(),
        })
    }
}

impl Encode for Version {
    /// The numbers, then the JSON with its NUL when there is any.
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_u16(self.major);
        out.put_u16(self.minor);
        if !self.json.is_empty() {
            out.extend_from_slice(self.json.as_bytes());
            out.push(0);
        }
    }
}

impl Version {
    /// Parses the capabilities object; absent fields take the spec's defaults, unknown ones
    /// are ignored (peers add their own), and a field of the wrong type is an error.
    pub fn caps(&self) -> Result<Caps, WireError> {
        let mut caps = Caps::default();
        if self.json.trim().is_empty() {
            return Ok(caps);
        }
        // The whole text must be one JSON object, nested at most serde_json's default depth
        // (128; an unknown field is otherwise skipped without a depth limit): 10,000 brackets,
        // a truncated text or a bare array is a refusal, not "no capabilities".
        let whole: serde_json::Value =
            serde_json::from_str(&self.json).map_err(|e| WireError::Json(e.to_string()))?;
        if !whole.is_object() {
            return Err(WireError::Json("version data is not a JSON object".into()));
        }
        // Typed a second time from the text, so a duplicated key is refused too.
        let doc: VersionJson =
            serde_json::from_str(&self.json).map_err(|e| WireError::Json(e.to_string()))?;
        let Some(c) = doc.capabilities else {
            return Ok(caps);
        };
        caps.max_msg_fds = c.max_msg_fds.unwrap_or(caps.max_msg_fds);
        caps.max_data_xfer_size = c.max_data_xfer_size.unwrap_or(caps.max_data_xfer_size);
        caps.max_dma_maps = c.max_dma_maps.unwrap_or(caps.max_dma_maps);
        caps.pgsizes = c.pgsizes.unwrap_or(caps.pgsizes);
        caps.write_multiple = c.write_multiple.unwrap_or(caps.write_multiple);
        caps.twin_socket = c
            .twin_socket
            .and_then(|t| t.supported.then_some(t.fd_index));
        Ok(caps)
    }

    /// JSON text describing `caps`.
    pub(crate) fn caps_json(caps: &Caps) -> String {
        let doc = VersionJson {
            capabilities: Some(CapsJson {
                max_msg_fds: Some(caps.max_msg_fds),
                max_data_xfer_size: Some(caps.max_data_xfer_size),
                max_dma_maps: Some(caps.max_dma_maps),
                pgsizes: Some(caps.pgsizes),
                write_multiple: Some(caps.write_multiple),
                _migration: None,
                twin_socket: caps.twin_socket.map(|fd_index| TwinSocketJson {
                    supported: true,
                    fd_index,
                }),
            }),
        };
        serde_json::to_string(&doc).unwrap_or_default()
    }
}

/// The JSON after VERSION's numbers, as the spec lays it out.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct VersionJson {
    #[serde(default)]
    capabilities: Option<CapsJson>,
}

/// `capabilities`: every field optional (absent means the spec's default).
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct CapsJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_msg_fds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_data_xfer_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_dma_maps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pgsizes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    write_multiple: Option<bool>,
    /// The legacy migration object older peers still send: accepted (it must be an object),
    /// not used and never echoed.
    #[serde(default, skip_serializing, rename = "migration")]
    _migration: Option<LegacyMigration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    twin_socket: Option<TwinSocketJson>,
}

/// `capabilities.migration` of older peers: any object (its fields are not ours to use).
#[derive(Debug, serde::Deserialize)]
struct LegacyMigration {}

/// `capabilities.twin_socket`.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct TwinSocketJson {
    #[serde(default)]
    supported: bool,
    #[serde(default)]
    fd_index: u32,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn caps_of(json: &str) -> Result<Caps, WireError> {
        Version {
            major: 0,
            minor: 0,
            json: json.into(),
        }
        .caps()
    }

    #[test]
    fn version_json_that_does_not_parse_as_an_object_is_an_error() {
        let nested = |n: usize| format!("{{\"x\":{}{}}}", "[".repeat(n), "]".repeat(n));
        for bad in [
            nested(10_000),
            nested(400_000),
            "[".repeat(400_000),
            "{\"capabilities\":{".into(),
            "[]".into(),
            "[null]".into(),
            "5".into(),
            "null".into(),
            "{\"capabilities\":{},\"capabilities\":{}}".into(),
        ] {
            assert!(caps_of(&bad).is_err(), "accepted {:.40}", bad);
        }
        assert_eq!(caps_of(&nested(100)).unwrap(), Caps::default());
        assert_eq!(caps_of("{}").unwrap(), Caps::default());
        assert_eq!(caps_of("").unwrap(), Caps::default());
    }
}
