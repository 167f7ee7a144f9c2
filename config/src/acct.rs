//! Accounting files as PowerMTA writes them (User's Guide chapter 11): record types, the
//! fields each may carry, the `*` list of each (the columns in PowerMTA's order), and what an
//! `<acct-file>` asks for.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

/// An accounting record type (`records` takes the codes and the long names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordType {
    Delivered,
    Bounced,
    Transient,
    QueueEvent,
    Received,
    Feedback,
    RemoteBounce,
    /// `rs`: a remote status report (a positive or delayed DSN).
    RemoteStatus,
}

impl RecordType {
    /// Every type, in PowerMTA's order (`records all`).
    pub const ALL: [RecordType; 8] = [
        RecordType::Delivered,
        RecordType::Bounced,
        RecordType::Transient,
        RecordType::QueueEvent,
        RecordType::Received,
        RecordType::Feedback,
        RecordType::RemoteBounce,
        RecordType::RemoteStatus,
    ];

    pub fn code(self) -> &'static str {
        match self {
            RecordType::Delivered => "d",
            RecordType::Bounced => "b",
            RecordType::Transient => "t",
            RecordType::QueueEvent => "tq",
            RecordType::Received => "r",
            RecordType::Feedback => "f",
            RecordType::RemoteBounce => "rb",
            RecordType::RemoteStatus => "rs",
        }
    }

    /// A type by its code or its long name (`d`, `delivery`; `f`, `feedback-loop`).
    pub fn parse(v: &str) -> Option<RecordType> {
        Some(match v.trim().to_ascii_lowercase().as_str() {
            "d" | "delivery" | "delivered" => RecordType::Delivered,
            "b" | "bounce" | "bounced" => RecordType::Bounced,
            "t" | "transient" => RecordType::Transient,
            "tq" | "transient-queue" => RecordType::QueueEvent,
            "r" | "receipt" | "received" => RecordType::Received,
            "f" | "feedback-loop" => RecordType::Feedback,
            "rb" | "remote-bounce" => RecordType::RemoteBounce,
            "rs" | "remote-status" => RecordType::RemoteStatus,
            _ => return None,
        })
    }
}

/// A column of an accounting file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AcctField {
    Type,
    TimeLogged,
    TimeQueued,
    TimeFirstAttempt,
    TotalSecondsQueued,
    TimeImprinted,
    Orig,
    Rcpt,
    Orcpt,
    DsnAction,
    DsnStatus,
    DsnDiag,
    DsnMta,
    DsnReportingMta,
    BounceCat,
    SrcType,
    SrcMta,
    DlvType,
    DlvSourceIp,
    DlvDestinationIp,
    DlvEsmtpAvailable,
    DlvSize,
    Vmta,
    JobId,
    EnvId,
    Queue,
    VmtaPool,
    UserString,
    DlvTlsProtocol,
    DlvTlsCipher,
    RcvSmtpUser,
    RcvSourceIp,
    RcvDestinationIp,
    RepSourceIp,
    FeedbackType,
    Format,
    UserAgent,
    ReportingMta,
    ReportedDomain,
    /// sluice's: the inbound SPF/DKIM/DMARC/ARC results of an `r` record.
    AuthResults,
    /// `header_NAME`: a header field of the message (the name as written).
    Header(String),
}

/// Every field by its name as PowerMTA writes it in the header line.
const NAMES: &[(&str, AcctField)] = &[
    ("type", AcctField::Type),
    ("timeLogged", AcctField::TimeLogged),
    ("timeQueued", AcctField::TimeQueued),
    ("timeFirstAttempt", AcctField::TimeFirstAttempt),
    ("totalSecondsQueued", AcctField::TotalSecondsQueued),
    ("timeImprinted", AcctField::TimeImprinted),
    ("orig", AcctField::Orig),
    ("rcpt", AcctField::Rcpt),
    ("orcpt", AcctField::Orcpt),
    ("dsnAction", AcctField::DsnAction),
    ("dsnStatus", AcctField::DsnStatus),
    ("dsnDiag", AcctField::DsnDiag),
    ("dsnMta", AcctField::DsnMta),
    ("dsnReportingMta", AcctField::DsnReportingMta),
    ("bounceCat", AcctField::BounceCat),
    ("srcType", AcctField::SrcType),
    ("srcMta", AcctField::SrcMta),
    ("dlvType", AcctField::DlvType),
    ("dlvSourceIp", AcctField::DlvSourceIp),
    ("dlvDestinationIp", AcctField::DlvDestinationIp),
    ("dlvEsmtpAvailable", AcctField::DlvEsmtpAvailable),
    ("dlvSize", AcctField::DlvSize),
    ("vmta", AcctField::Vmta),
    ("jobId", AcctField::JobId),
    ("envId", AcctField::EnvId),
    ("queue", AcctField::Queue),
    ("vmtaPool", AcctField::VmtaPool),
    ("userString", AcctField::UserString),
    ("dlvTlsProtocol", AcctField::DlvTlsProtocol),
    ("dlvTlsCipher", AcctField::DlvTlsCipher),
    ("rcvSmtpUser", AcctField::RcvSmtpUser),
    ("rcvSourceIp", AcctField::RcvSourceIp),
    ("rcvDestinationIp", AcctField::RcvDestinationIp),
    ("repSourceIp", AcctField::RepSourceIp),
    ("feedbackType", AcctField::FeedbackType),
    ("format", AcctField::Format),
    ("userAgent", AcctField::UserAgent),
    ("reportingMTA", AcctField::ReportingMta),
    ("reportedDomain", AcctField::ReportedDomain),
    ("authResults", AcctField::AuthResults),
];

/// Every field name `record-fields` takes (`header_NAME` besides).
pub fn field_names() -> impl Iterator<Item = &'static str> {
    NAMES.iter().map(|(n, _)| *n)
}

impl AcctField {
    /// A field by name, in any case (`envid`, `reportingMta`), or `header_NAME`.
    pub fn parse(v: &str) -> Option<AcctField> {
        if let Some(name) = v.strip_prefix("header_") {
            // RFC 5322 §3.6.8: a field name is printable ASCII but the colon.
            let ok = !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
            return ok.then(|| AcctField::Header(name.to_string()));
        }
        NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(v)).map(|(_, f)| f.clone())
    }

    /// The name in a header line.
    pub fn name(&self) -> Cow<'static, str> {
        match self {
            AcctField::Header(h) => Cow::Owned(format!("header_{h}")),
            f => Cow::Borrowed(NAMES.iter().find(|(_, g)| g == f).map(|(n, _)| *n).expect("every field is named")),
        }
    }
}

/// The `*` list of a record type: its columns in PowerMTA's order (after `type`), as the
/// Guide's tables and sample lines give them.
pub fn default_fields(t: RecordType) -> Vec<AcctField> {
    use AcctField::*;
    match t {
        RecordType::Delivered | RecordType::Bounced | RecordType::Transient => vec![
            TimeLogged,
            TimeQueued,
            Orig,
            Rcpt,
            Orcpt,
            DsnAction,
            DsnStatus,
            DsnDiag,
            DsnMta,
            BounceCat,
            SrcType,
            SrcMta,
            DlvType,
            DlvSourceIp,
            DlvDestinationIp,
            DlvEsmtpAvailable,
            DlvSize,
            Vmta,
            JobId,
            EnvId,
            Queue,
            VmtaPool,
            DlvTlsProtocol,
            DlvTlsCipher,
            RcvSmtpUser,
        ],
        RecordType::QueueEvent => {
            vec![TimeLogged, DsnStatus, DsnDiag, DsnMta, DlvType, DlvSourceIp, DlvDestinationIp, Vmta, Queue]
        }
        RecordType::Received => vec![
            TimeLogged,
            Orig,
            Rcpt,
            Orcpt,
            SrcType,
            SrcMta,
            RcvSourceIp,
            RcvDestinationIp,
            Vmta,
            VmtaPool,
            JobId,
            EnvId,
            RcvSmtpUser,
            AuthResults,
        ],
        RecordType::RemoteBounce => vec![
            TimeLogged,
            Orig,
            Rcpt,
            Orcpt,
            DsnStatus,
            DsnDiag,
            DsnMta,
            DsnReportingMta,
            BounceCat,
            SrcType,
            SrcMta,
            EnvId,
            Format,
        ],
        RecordType::RemoteStatus => vec![
            TimeLogged, Orig, Rcpt, Orcpt, DsnAction, DsnStatus, DsnDiag, DsnMta, BounceCat, SrcType, SrcMta, EnvId,
            Format,
        ],
        RecordType::Feedback => vec![
            TimeLogged,
            RepSourceIp,
            FeedbackType,
            Format,
            UserAgent,
            EnvId,
            Orig,
            Rcpt,
            ReportingMta,
            DlvSourceIp,
            ReportedDomain,
        ],
    }
}

/// Where an `<acct-file>`'s records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcctSink {
    /// `<acct-file /var/log/pmta/acct.csv>`: files named `acct-YYYY-MM-DD-NNNN.csv` there.
    File(PathBuf),
    /// `<acct-file |/usr/bin/php handler.php>`: a program, fed on its standard input (a
    /// header line first).
    Pipe(String),
}

/// `<acct-file>`: what it records and how its files turn over.
#[derive(Debug, Clone)]
pub struct AcctFile {
    pub sink: AcctSink,
    pub records: Vec<RecordType>,
    /// `record-fields TYPE FIELDS` per type (`*`, `!field` and `header_NAME` resolved);
    /// types not named have their `*` list.
    pub fields: Vec<(RecordType, Vec<AcctField>)>,
    /// `map-header-to-field TYPE header_NAME FIELD`: the field shows the header's value when
    /// the message has it (the first such line that applies wins).
    pub header_map: Vec<(RecordType, String, AcctField)>,
    /// `privacy-policy hmac-sha256 KEY`: local parts of addresses are hashed with KEY.
    pub privacy_key: Option<String>,
    /// `max-size`: a new file past this size.
    pub max_size: Option<u64>,
    /// `move-interval`: a new file every this long (aligned to the interval since midnight).
    pub move_interval: Option<Duration>,
    /// `move-to DIR`: finished files go there.
    pub move_to: Option<PathBuf>,
    /// `delete-after`: finished files older than this are deleted (None: `never`).
    pub delete_after: Option<Duration>,
    /// `world-readable yes`: files are created mode 0644 (else 0640).
    pub world_readable: bool,
    /// `iso-times no`: times as Unix seconds (default: `YYYY-MM-DD HH:MM:SS+0000`).
    pub iso_times: bool,
    /// `user-string`: the `userString` column's value.
    pub user_string: String,
}

impl AcctFile {
    /// A file with PowerMTA's defaults: `d` and `b` records, a new file daily and past 250M,
    /// finished files deleted after 8 days.
    pub fn new(sink: AcctSink) -> AcctFile {
        AcctFile {
            sink,
            records: vec![RecordType::Delivered, RecordType::Bounced],
            fields: Vec::new(),
            header_map: Vec::new(),
            privacy_key: None,
            max_size: Some(250 << 20),
            move_interval: Some(Duration::from_secs(86_400)),
            move_to: None,
            delete_after: Some(Duration::from_secs(8 * 86_400)),
            world_readable: false,
            iso_times: true,
            user_string: String::new(),
        }
    }

    /// The columns of records of type `t` (after `type`).
    pub fn fields_of(&self, t: RecordType) -> Vec<AcctField> {
        match self.fields.iter().find(|(ft, _)| *ft == t) {
            Some((_, f)) => f.clone(),
            None => default_fields(t),
        }
    }

    /// The file's columns: `type`, then every column any of its record types has, in the
    /// order first met (PowerMTA: "all the possible columns from the selected records").
    pub fn columns(&self) -> Vec<AcctField> {
        let mut columns = vec![AcctField::Type];
        for t in &self.records {
            for f in self.fields_of(*t) {
                if !columns.contains(&f) {
                    columns.push(f);
                }
            }
        }
        columns
    }

    /// The header fields this file reads from messages (columns and `map-header-to-field`).
    pub fn headers(&self) -> Vec<String> {
        let from_columns = self.columns().into_iter().filter_map(|f| match f {
            AcctField::Header(h) => Some(h),
            _ => None,
        });
        from_columns.chain(self.header_map.iter().map(|(_, h, _)| h.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_any_case() {
        for name in field_names() {
            assert_eq!(AcctField::parse(name).unwrap().name(), name);
            assert_eq!(AcctField::parse(&name.to_ascii_lowercase()).unwrap().name(), name);
        }
        assert_eq!(AcctField::parse("header_X-Job"), Some(AcctField::Header("X-Job".into())));
        assert_eq!(AcctField::parse("header_"), None);
        assert_eq!(AcctField::parse("envid"), Some(AcctField::EnvId));
        assert_eq!(AcctField::parse("nosuch"), None);
    }

    #[test]
    fn a_file_has_the_union_of_its_types_columns_in_order() {
        let mut a = AcctFile::new(AcctSink::File("a.csv".into()));
        a.fields = vec![
            (
                RecordType::Delivered,
                vec![AcctField::TimeLogged, AcctField::Orig, AcctField::Rcpt, AcctField::DlvSourceIp],
            ),
            (RecordType::Bounced, vec![AcctField::TimeLogged, AcctField::Orig, AcctField::Rcpt, AcctField::BounceCat]),
        ];
        let names: Vec<_> = a.columns().iter().map(|f| f.name().into_owned()).collect();
        // The Guide's own example (11.2.9).
        assert_eq!(names, ["type", "timeLogged", "orig", "rcpt", "dlvSourceIp", "bounceCat"]);
    }
}
