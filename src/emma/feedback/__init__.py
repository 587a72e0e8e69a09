"""Survey answers (the NPS question of feedback_request), recorded as "Survey Answered" events."""
