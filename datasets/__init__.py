"""safefql.datasets"""
