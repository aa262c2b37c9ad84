#!/usr/bin/env python3
"""A switchboard verification_hook: mail the sign-up link with the system's sendmail.

switchboard runs this program for each self sign-up, without arguments, with
{"email": ..., "link": ..., "token": ...} as JSON on standard input. Exit status 0
means the mail was handed over; anything else is logged as a failed hook.
Install it executable, e.g. /usr/local/bin/switchboard-verification-hook, and set
verification_hook to that path. See docs/how-to/accounts.md.
"""

import json
import subprocess
import sys
from email.message import EmailMessage

SENDMAIL = "/usr/sbin/sendmail"
FROM = "switchboard <no-reply@meet.example.com>"

signup = json.load(sys.stdin)
mail = EmailMessage()  # refuses header values with line breaks: no header injection
mail["From"] = FROM
mail["To"] = signup["email"]
mail["Subject"] = "Confirm your switchboard account"
mail.set_content(
    "Someone, we hope you, created a switchboard host account with this address.\n"
    f"To confirm it, open this link within 48 hours:\n\n    {signup['link']}\n\n"
    "If it was not you, ignore this mail: the account cannot be used unconfirmed.\n",
    cte="7bit",  # keep the link on one line, as it is
)
subprocess.run([SENDMAIL, "-t", "-i"], input=mail.as_bytes(), check=True, timeout=20)
