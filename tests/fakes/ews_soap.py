"""SOAP bodies of the fake Exchange server, shaped like the published EWS schema.

The element names, namespaces and response codes follow Microsoft's EWS
reference (messages.xsd and types.xsd of the 2006 services schema, and the
2010 Autodiscover schema). Only the elements that a client reads are filled
in; a real server sends more.
"""

from xml.sax.saxutils import escape

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
MESSAGES = "http://schemas.microsoft.com/exchange/services/2006/messages"
TYPES = "http://schemas.microsoft.com/exchange/services/2006/types"
ERRORS = "http://schemas.microsoft.com/exchange/services/2006/errors"
AUTODISCOVER = "http://schemas.microsoft.com/exchange/2010/Autodiscover"
ADDRESSING = "http://www.w3.org/2005/08/addressing"
INSTANCE = "http://www.w3.org/2001/XMLSchema-instance"

# Exchange Server 2019 CU14 reports this build. Exchange 2016 and later put a
# dated schema name, not "Exchange2016", in the Version attribute.
BUILD = (15, 2, 1544, 4)
SCHEMA_VERSION = "V2017_07_11"
SUPPORTED_SCHEMAS = (
    "Exchange2007, Exchange2007_SP1, Exchange2010, Exchange2010_SP1, "
    "Exchange2010_SP2, Exchange2013, Exchange2013_SP1, Exchange2016"
)


def _server_version_info() -> str:
    major, minor, major_build, minor_build = BUILD
    return (
        f'<h:ServerVersionInfo MajorVersion="{major}" MinorVersion="{minor}" '
        f'MajorBuildNumber="{major_build}" MinorBuildNumber="{minor_build}" '
        f'Version="{SCHEMA_VERSION}" xmlns:h="{TYPES}" '
        f'xmlns="{TYPES}" xmlns:xsi="{INSTANCE}"/>'
    )


def envelope(body: str) -> bytes:
    """Wrap an EWS response body, with the ServerVersionInfo header EWS always sends."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="{SOAP}">'
        f"<s:Header>{_server_version_info()}</s:Header>"
        f"<s:Body>{body}</s:Body>"
        "</s:Envelope>"
    ).encode()


def response_message(
    operation: str, code: str = "NoError", text: str = "", content: str = ""
) -> str:
    """One <m:{operation}ResponseMessage>; an error code makes ResponseClass Error."""
    if code == "NoError":
        return (
            f'<m:{operation}ResponseMessage ResponseClass="Success">'
            f"<m:ResponseCode>NoError</m:ResponseCode>{content}"
            f"</m:{operation}ResponseMessage>"
        )
    return (
        f'<m:{operation}ResponseMessage ResponseClass="Error">'
        f"<m:MessageText>{escape(text)}</m:MessageText>"
        f"<m:ResponseCode>{code}</m:ResponseCode>"
        "<m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>"
        f"{content}"
        f"</m:{operation}ResponseMessage>"
    )


def operation_response(operation: str, messages: str) -> bytes:
    return envelope(
        f'<m:{operation}Response xmlns:m="{MESSAGES}" xmlns:t="{TYPES}">'
        f"<m:ResponseMessages>{messages}</m:ResponseMessages>"
        f"</m:{operation}Response>"
    )


def folder(
    folder_id: str, name: str, total: int, unread: int, folder_class: str
) -> str:
    return (
        "<t:Folder>"
        f'<t:FolderId Id="{escape(folder_id)}" ChangeKey="AQAAABYAAAA="/>'
        f"<t:FolderClass>{folder_class}</t:FolderClass>"
        f"<t:DisplayName>{escape(name)}</t:DisplayName>"
        f"<t:TotalCount>{total}</t:TotalCount>"
        "<t:ChildFolderCount>0</t:ChildFolderCount>"
        f"<t:UnreadCount>{unread}</t:UnreadCount>"
        "</t:Folder>"
    )


def fault(code: str, text: str, back_off_ms: int | None = None) -> bytes:
    """A SOAP fault, as EWS sends for throttling and for errors before any operation.

    ErrorServerBusy carries the wait that the server asks for in
    BackOffMilliseconds.
    """
    message_xml = ""
    if back_off_ms is not None:
        message_xml = (
            f'<t:MessageXml xmlns:t="{TYPES}">'
            f'<t:Value Name="BackOffMilliseconds">{back_off_ms}</t:Value>'
            "</t:MessageXml>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="{SOAP}"><s:Body><s:Fault>'
        f'<faultcode xmlns:a="{TYPES}">a:{code}</faultcode>'
        f'<faultstring xml:lang="en-US">{escape(text)}</faultstring>'
        "<detail>"
        f'<e:ResponseCode xmlns:e="{ERRORS}">{code}</e:ResponseCode>'
        f'<e:Message xmlns:e="{ERRORS}">{escape(text)}</e:Message>'
        f"{message_xml}"
        "</detail>"
        "</s:Fault></s:Body></s:Envelope>"
    ).encode()


# -- Autodiscover (SOAP) --------------------------------------------------------


def _autodiscover_envelope(body: str) -> bytes:
    major, minor, major_build, minor_build = BUILD
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="{SOAP}" xmlns:a="{ADDRESSING}">'
        "<s:Header>"
        '<a:Action s:mustUnderstand="1">'
        "http://schemas.microsoft.com/exchange/2010/Autodiscover/Autodiscover/"
        "GetUserSettingsResponse</a:Action>"
        f'<h:ServerVersionInfo xmlns:h="{AUTODISCOVER}" xmlns:i="{INSTANCE}">'
        f"<h:MajorVersion>{major}</h:MajorVersion>"
        f"<h:MinorVersion>{minor}</h:MinorVersion>"
        f"<h:MajorBuildNumber>{major_build}</h:MajorBuildNumber>"
        f"<h:MinorBuildNumber>{minor_build}</h:MinorBuildNumber>"
        "<h:Version>Exchange2015</h:Version>"
        "</h:ServerVersionInfo>"
        "</s:Header>"
        f"<s:Body>{body}</s:Body>"
        "</s:Envelope>"
    ).encode()


def user_settings_response(
    *,
    error_code: str = "NoError",
    error_message: str = "No error.",
    redirect_target: str = "",
    settings: dict[str, str] | None = None,
) -> bytes:
    """A GetUserSettingsResponseMessage with one UserResponse.

    ``error_code`` is the UserResponse's code: NoError, RedirectAddress,
    RedirectUrl or InvalidUser among others.
    """
    target = (
        f"<RedirectTarget>{escape(redirect_target)}</RedirectTarget>"
        if redirect_target
        else '<RedirectTarget i:nil="true"/>'
    )
    settings_xml = "".join(
        '<UserSetting i:type="StringSetting">'
        f"<Name>{name}</Name><Value>{escape(value)}</Value>"
        "</UserSetting>"
        for name, value in (settings or {}).items()
    )
    body = (
        f'<GetUserSettingsResponseMessage xmlns="{AUTODISCOVER}">'
        f'<Response xmlns:i="{INSTANCE}">'
        "<ErrorCode>NoError</ErrorCode><ErrorMessage/>"
        "<UserResponses><UserResponse>"
        f"<ErrorCode>{error_code}</ErrorCode>"
        f"<ErrorMessage>{escape(error_message)}</ErrorMessage>"
        f"{target}"
        "<UserSettingErrors/>"
        f"<UserSettings>{settings_xml}</UserSettings>"
        "</UserResponse></UserResponses>"
        "</Response>"
        "</GetUserSettingsResponseMessage>"
    )
    return _autodiscover_envelope(body)


def cas_version() -> str:
    """The CasVersion setting: the build with zero-padded minor parts."""
    major, minor, major_build, minor_build = BUILD
    return f"{major}.{minor:02d}.{major_build:04d}.{minor_build:03d}"
