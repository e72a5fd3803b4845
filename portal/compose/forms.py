from flask_wtf import FlaskForm
from wtforms import SelectField, StringField, TextAreaField

ADDRESS_HINT = "Separate several addresses with commas."


class ComposeForm(FlaskForm):
    # Choices come from the access rule at request time; the view checks the
    # posted id against the rule itself, so a forged id gets 403, not a
    # form error.
    account_id = SelectField("From", choices=[], validate_choice=False)
    to = StringField("To")
    cc = StringField("Cc")
    bcc = StringField("Bcc")
    subject = StringField("Subject")
    body = TextAreaField("Message")
