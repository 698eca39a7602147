"""SMB2/3 semantics of a bucketgate share through smbprotocol (PyPI), a client
independent of Samba's: create dispositions, delete-on-close, share modes, FLUSH, a
directory of 5,000 entries listed from the store, and an encrypted session.

Run by smb-semantics.sh, which starts the gateway:
    smb_semantics.py cases HOST PORT USER PASSWORD MOUNT
    smb_semantics.py flush-and-hold HOST PORT USER PASSWORD RELEASE_FILE
"""

import hashlib
import os
import sys
import time
import uuid

from smbprotocol.connection import Connection
from smbprotocol.exceptions import (
    ObjectNameCollision,
    ObjectNameNotFound,
    SharingViolation,
    SMBResponseException,
)
from smbprotocol.file_info import FileInformationClass
from smbprotocol.open import (
    CreateAction,
    CreateDisposition,
    CreateOptions,
    FileAttributes,
    FilePipePrinterAccessMask as Access,
    ImpersonationLevel,
    Open,
    ShareAccess,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

STATUS_DELETE_PENDING = 0xC0000056
SHARE_ALL = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
READ = Access.FILE_READ_DATA | Access.FILE_READ_ATTRIBUTES
WRITE = READ | Access.FILE_WRITE_DATA | Access.FILE_WRITE_ATTRIBUTES


def connect(host, port, user, password, encrypt=False):
    conn = Connection(uuid.uuid4(), host, int(port))
    conn.connect()
    session = Session(conn, user, password, require_encryption=encrypt, auth_protocol="ntlm")
    session.connect()
    tree = TreeConnect(session, r"\\%s\data" % host)
    tree.connect()
    return tree


def create(tree, name, disposition, access=WRITE, share=SHARE_ALL, options=0, directory=False):
    """Opens `name`; returns (open, create action)."""
    f = Open(tree, name)
    if directory:
        options |= CreateOptions.FILE_DIRECTORY_FILE
    else:
        options |= CreateOptions.FILE_NON_DIRECTORY_FILE
    attrs = FileAttributes.FILE_ATTRIBUTE_DIRECTORY if directory else FileAttributes.FILE_ATTRIBUTE_NORMAL
    f.create(ImpersonationLevel.Impersonation, access, attrs, share, disposition, options)
    return f, f.create_action


def refused(expected, fn, what):
    try:
        fn()
    except expected:
        return
    raise AssertionError(f"{what}: succeeded, expected {expected.__name__}")


def refused_status(status, fn, what):
    try:
        fn()
    except SMBResponseException as e:
        assert e.status == status, f"{what}: status {e.status:#x}, expected {status:#x}"
        return
    raise AssertionError(f"{what}: succeeded, expected status {status:#x}")


def read_all(tree, name):
    f, _ = create(tree, name, CreateDisposition.FILE_OPEN, access=READ)
    size = f.end_of_file
    data = f.read(0, size) if size else b""
    f.close()
    return data


def write_new(tree, name, data):
    f, _ = create(tree, name, CreateDisposition.FILE_OVERWRITE_IF)
    if data:
        f.write(data, 0)
    f.close()


def dispositions(tree, mount):
    f, action = create(tree, "disp.txt", CreateDisposition.FILE_CREATE)
    assert action == CreateAction.FILE_CREATED, action
    f.write(b"hello", 0)
    f.close()
    refused(ObjectNameCollision, lambda: create(tree, "disp.txt", CreateDisposition.FILE_CREATE), "FILE_CREATE of an existing file")
    refused(ObjectNameNotFound, lambda: create(tree, "missing.txt", CreateDisposition.FILE_OPEN), "FILE_OPEN of a missing file")
    refused(ObjectNameNotFound, lambda: create(tree, "missing.txt", CreateDisposition.FILE_OVERWRITE), "FILE_OVERWRITE of a missing file")
    f, action = create(tree, "disp.txt", CreateDisposition.FILE_OPEN_IF)
    assert action == CreateAction.FILE_OPENED and f.end_of_file == 5, (action, f.end_of_file)
    f.close()
    f, action = create(tree, "disp.txt", CreateDisposition.FILE_OVERWRITE)
    assert action == CreateAction.FILE_OVERWRITTEN and f.end_of_file == 0, (action, f.end_of_file)
    f.write(b"second", 0)
    f.close()
    f, action = create(tree, "disp.txt", CreateDisposition.FILE_SUPERSEDE)
    assert action == CreateAction.FILE_SUPERSEDED and f.end_of_file == 0, (action, f.end_of_file)
    f.write(b"third!", 0)
    f.close()
    f, action = create(tree, "fresh.txt", CreateDisposition.FILE_OPEN_IF)
    assert action == CreateAction.FILE_CREATED, action
    f.close()
    assert read_all(tree, "disp.txt") == b"third!"
    with open(os.path.join(mount, "disp.txt"), "rb") as local:
        assert local.read() == b"third!", "the FUSE mount disagrees with SMB"
    print("  create dispositions: CREATE, OPEN, OPEN_IF, OVERWRITE, OVERWRITE_IF, SUPERSEDE")


def delete_on_close(tree, mount):
    f, _ = create(tree, "doc.txt", CreateDisposition.FILE_CREATE, access=WRITE | Access.DELETE, options=CreateOptions.FILE_DELETE_ON_CLOSE)
    f.write(b"gone at close", 0)
    f.close()
    refused(ObjectNameNotFound, lambda: create(tree, "doc.txt", CreateDisposition.FILE_OPEN), "open after delete-on-close")
    assert not os.path.exists(os.path.join(mount, "doc.txt")), "a deleted-on-close file is still on the mount"

    # With a second handle open, the file is delete-pending until the last close.
    write_new(tree, "pending.txt", b"x")
    keep, _ = create(tree, "pending.txt", CreateDisposition.FILE_OPEN, access=READ)
    doomed, _ = create(tree, "pending.txt", CreateDisposition.FILE_OPEN, access=READ | Access.DELETE, options=CreateOptions.FILE_DELETE_ON_CLOSE)
    doomed.close()
    refused_status(STATUS_DELETE_PENDING, lambda: create(tree, "pending.txt", CreateDisposition.FILE_OPEN, access=READ), "open of a delete-pending file")
    assert keep.read(0, 1) == b"x", "the remaining handle reads its file"
    keep.close()
    refused(ObjectNameNotFound, lambda: create(tree, "pending.txt", CreateDisposition.FILE_OPEN), "open after the last close")

    # An empty directory opened delete-on-close goes too.
    d, _ = create(tree, "dod", CreateDisposition.FILE_CREATE, access=READ | Access.DELETE, directory=True, options=CreateOptions.FILE_DELETE_ON_CLOSE)
    d.close()
    assert not os.path.exists(os.path.join(mount, "dod")), "a deleted-on-close directory is still on the mount"
    print("  delete-on-close: a file, a file with another handle open (delete pending), a directory")


def share_modes(tree):
    write_new(tree, "share.txt", b"shared")
    exclusive, _ = create(tree, "share.txt", CreateDisposition.FILE_OPEN, access=READ, share=0)
    refused(SharingViolation, lambda: create(tree, "share.txt", CreateDisposition.FILE_OPEN, access=READ), "a second open of a file opened without sharing")
    exclusive.close()
    readers, _ = create(tree, "share.txt", CreateDisposition.FILE_OPEN, access=READ, share=ShareAccess.FILE_SHARE_READ)
    refused(SharingViolation, lambda: create(tree, "share.txt", CreateDisposition.FILE_OPEN, access=WRITE), "a writer past FILE_SHARE_READ only")
    reader, _ = create(tree, "share.txt", CreateDisposition.FILE_OPEN, access=READ)
    reader.close()
    readers.close()
    no_delete, _ = create(tree, "share.txt", CreateDisposition.FILE_OPEN, access=READ, share=ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE)
    refused(SharingViolation, lambda: create(tree, "share.txt", CreateDisposition.FILE_OPEN, access=READ | Access.DELETE), "DELETE past an open without FILE_SHARE_DELETE")
    no_delete.close()
    writer, _ = create(tree, "share.txt", CreateDisposition.FILE_OPEN, access=WRITE)
    refused(SharingViolation, lambda: create(tree, "share.txt", CreateDisposition.FILE_OPEN, access=READ, share=ShareAccess.FILE_SHARE_READ), "an open sharing only reads while a writer has it")
    writer.close()
    print("  share modes: none, read only, no delete, against a writer")


def flush_and_read(tree, mount):
    data = os.urandom(3 << 20)
    f, _ = create(tree, "flushed.bin", CreateDisposition.FILE_OVERWRITE_IF)
    for off in range(0, len(data), 1 << 20):
        f.write(data[off:off + (1 << 20)], off)
    f.flush()
    with open(os.path.join(mount, "flushed.bin"), "rb") as local:
        assert local.read() == data, "after FLUSH the mount holds other bytes"
    f.close()
    assert read_all(tree, "flushed.bin") == data
    print("  FLUSH: 3 MiB written, flushed, read back through SMB and the mount")


def many_entries(tree, mount):
    """The wrapper put 5,000 objects under many/ in the bucket, never listed."""
    d, _ = create(tree, "many", CreateDisposition.FILE_OPEN, access=READ, directory=True)
    names = []
    while True:
        try:
            entries = d.query_directory("*", FileInformationClass.FILE_NAMES_INFORMATION)
        except SMBResponseException as e:
            if e.status == 0x80000006:  # STATUS_NO_MORE_FILES
                break
            raise
        if not entries:
            break
        names += [e["file_name"].get_value().decode("utf-16-le") for e in entries]
    d.close()
    names = sorted(n for n in names if n not in (".", ".."))
    want = sorted("f%05d" % i for i in range(5000))
    assert names == want, f"listed {len(names)} names, want 5,000 (first differences: {sorted(set(want) ^ set(names))[:5]})"
    assert read_all(tree, "many/f04999") == b"object 4999\n"
    print("  a directory of 5,000 objects never listed before: every name, once")


def encrypted(host, port, user, password):
    tree = connect(host, port, user, password, encrypt=True)
    assert tree.session.encrypt_data, "the session is not encrypted"
    write_new(tree, "sealed.txt", b"sealed")
    assert read_all(tree, "sealed.txt") == b"sealed"
    print("  an encrypted SMB 3 session writes and reads")


def main():
    mode, host, port, user, password, path = sys.argv[1:7]
    if mode == "cases":
        tree = connect(host, port, user, password)
        print(f"smb-semantics: dialect {tree.session.connection.dialect:#x}")
        dispositions(tree, path)
        delete_on_close(tree, path)
        share_modes(tree)
        flush_and_read(tree, path)
        many_entries(tree, path)
        encrypted(host, port, user, password)
    elif mode == "flush-and-hold":
        # Written and flushed, never closed: the wrapper kills the gateway meanwhile.
        tree = connect(host, port, user, password)
        data = os.urandom(5 << 20)
        f, _ = create(tree, "held.bin", CreateDisposition.FILE_OVERWRITE_IF)
        for off in range(0, len(data), 1 << 20):
            f.write(data[off:off + (1 << 20)], off)
        f.flush()
        print("FLUSHED", hashlib.sha256(data).hexdigest(), flush=True)
        deadline = time.time() + 120
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.1)
        os._exit(0)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
